#!/usr/bin/env bash
# The GPU check (scripts/gpu_check.sh) on a machine without network: `make`
# writes a wheelhouse, where the network is, of everything the check needs
# beyond torch and what such a machine has already (numpy, sacrebleu,
# sentencepiece, tensorboard, tqdm, pytest); `install` installs it there with no
# network, fairseq built from its source against that machine's torch.
#
#   bash scripts/gpu_wheelhouse.sh make runs/wheelhouse      # where the network is
#   bash scripts/gpu_wheelhouse.sh install runs/wheelhouse   # on the GPU machine, then:
#   bash scripts/gpu_check.sh --quick
#
# make: wheels for Python PY_VERSION (3.12) on Linux x86_64 (manylinux2014, or
#   manylinux_2_28 where a release has no older wheel: torch's own CUDA wheels
#   need glibc 2.28 too), pure-Python wheels built here for the two packages
#   published as source only, and fairseq-fixed's source. Run it with a Python
#   that has torch (PYTHON; default: the project's .venv), for pip reads
#   fairseq's version from its setup.py, which imports torch. Never downloads
#   torch. Stops if the wheelhouse exceeds MAX_MIB (60).
# install: into PYTHON (default: python3 on PATH), which must have torch; from
#   the wheelhouse alone (no index, nothing from pip's configuration), then
#   fairseq-fixed with --no-build-isolation so that its C++ extensions build
#   against that torch (CPU extensions only: CUDA_HOME is unset for the build,
#   so no CUDA compiler is needed; fairseq has Python fallbacks for the CUDA
#   ones), then this checkout, editable.
# Each prints its steps and keeps pip's whole output in a log it names.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

die() { echo "gpu_wheelhouse.sh: error: $*" >&2; exit 1; }
say() { echo "[gpu-wheelhouse] $*"; }

# pinned NAME: NAME==VERSION as requirements.txt pins it, so that the
# wheelhouse holds the project's pinned stack (.venv) and follows it.
pinned() { grep -m1 -E "^$1==" "$root/requirements.txt"; }
for name in fairseq-fixed hydra-core omegaconf sacremoses subword-nmt pysbd rouge-score; do
  pinned "$name" >/dev/null || die "requirements.txt pins no $name"
done

# fairseq itself is installed without its declared dependencies: torchaudio
# (which must match the machine's torch), cffi and the rest are not used by the
# check. regex, packaging and absl-py are not here: sacrebleu, pytest and
# tensorboard, which the GPU machine has, depend on them (and 60 MiB leave no
# room to spare). What requirements.txt does not pin is pinned here.
FAIRSEQ=$(pinned fairseq-fixed)
WHEELS=(
  # fairseq at import time (its criteria import scipy and scikit-learn)
  "$(pinned hydra-core)" "$(pinned omegaconf)" PyYAML==6.0.4 bitarray==3.12.3
  scipy==1.17.1 scikit-learn==1.9.1 joblib==1.6.0 cloudpickle==3.1.3 threadpoolctl==3.8.0 narwhals==2.29.0
  # fairseq's build (--no-build-isolation), and this project's
  setuptools==84.2.1 wheel==0.48.0
  # the recipes' SMOKE runs: Moses detokenization and BPE, ROUGE with sentence splitting
  "$(pinned sacremoses)" click==8.5.1 "$(pinned subword-nmt)" mock==5.2.0
  "$(pinned pysbd)" nltk==3.10.4 defusedxml==0.7.1 six==1.17.0
)
# Cython only compiles two of fairseq's modules: its pure-Python wheel is a
# third of the size of a compiled one.
PURE_WHEELS=(cython==3.3.1)
# Published as source only: built here into pure-Python wheels.
SOURCE_ONLY=(antlr4-python3-runtime==4.9.3 "$(pinned rouge-score)")

make_wheelhouse() {
  local out="$1" py="${PYTHON:-$root/.venv/bin/python}" log mib
  local platforms=(--platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64)
  [ -x "$py" ] || die "no Python at $py: set PYTHON to one with torch, numpy and Cython"
  # pip reads fairseq's version from its setup.py, which imports them
  "$py" -c 'import torch, numpy, Cython' 2>/dev/null \
    || die "$py lacks torch, numpy or Cython: use the project's .venv (bash scripts/setup_env.sh)"
  mkdir -p "$out"
  out="$(cd "$out" && pwd)" log="$out/make.log"
  : > "$log"
  say "writing a wheelhouse for Python ${PY_VERSION:-3.12} on Linux x86_64 into $out; pip's output in $log"
  local pip=("$py" -m pip --disable-pip-version-check)
  say "1/4 wheels: ${WHEELS[*]}"
  "${pip[@]}" download --no-deps --only-binary=:all: --python-version "${PY_VERSION:-3.12}" "${platforms[@]}" \
    -d "$out" "${WHEELS[@]}" >>"$log" 2>&1 || die "downloading wheels failed; see $log"
  say "2/4 pure-Python wheels: ${PURE_WHEELS[*]}"
  "${pip[@]}" download --no-deps --only-binary=:all: --python-version "${PY_VERSION:-3.12}" --platform any \
    -d "$out" "${PURE_WHEELS[@]}" >>"$log" 2>&1 || die "downloading pure-Python wheels failed; see $log"
  say "3/4 wheels built from source: ${SOURCE_ONLY[*]}"
  "${pip[@]}" wheel --no-deps -w "$out" "${SOURCE_ONLY[@]}" >>"$log" 2>&1 || die "building wheels failed; see $log"
  say "4/4 source of $FAIRSEQ"
  "${pip[@]}" download --no-deps --no-binary=:all: --no-build-isolation -d "$out" "$FAIRSEQ" >>"$log" 2>&1 \
    || die "downloading $FAIRSEQ failed; see $log"
  if find "$out" -maxdepth 1 \( -iname 'torch-*' -o -iname 'nvidia_*' -o -iname 'triton-*' \) | grep -q .; then
    die "the wheelhouse holds torch or its CUDA libraries, which the GPU machine has: delete them from $out"
  fi
  # bytes as files, not disk blocks: what a copy carries
  mib="$(find "$out" -maxdepth 1 -type f ! -name make.log -printf '%s\n' \
         | awk '{s += $1} END {printf "%.1f", s / 1048576}')"
  (cd "$out" && ls -1 -- *.whl *.tar.gz) | sed 's/^/  /'
  awk -v mib="$mib" -v max="${MAX_MIB:-60}" 'BEGIN {exit !(mib <= max)}' \
    || die "the wheelhouse is $mib MiB, over ${MAX_MIB:-60} MiB"
  say "done: $mib MiB in $out. On the GPU machine: bash scripts/gpu_wheelhouse.sh install $out"
}

install_wheelhouse() {
  local dir="$1" py="${PYTHON:-$(command -v python3 || true)}" log start
  [ -d "$dir" ] || die "no wheelhouse at $dir (make one with: bash scripts/gpu_wheelhouse.sh make DIR)"
  dir="$(cd "$dir" && pwd)"
  [ -n "$py" ] || die "no python3 on PATH: set PYTHON to the Python that has torch"
  "$py" -c 'import torch' 2>/dev/null \
    || die "$py has no torch: install the machine's CUDA torch into it first, or set PYTHON"
  log="$root/runs/gpu-wheelhouse-install.log"
  mkdir -p "$(dirname "$log")"
  : > "$log"
  say "installing from $dir into $py (torch $("$py" -c 'import torch; print(torch.__version__)')), no network"
  say "pip's output in $log"
  # Only the wheelhouse: neither an index nor find-links from pip's configuration.
  local pip=(env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null
             "$py" -m pip --disable-pip-version-check install --no-index --find-links "$dir")
  local names=() spec
  for spec in "${WHEELS[@]}" "${PURE_WHEELS[@]}" "${SOURCE_ONLY[@]}"; do names+=("${spec%%==*}"); done
  start=$SECONDS step=$SECONDS
  say "1/3 ${#names[@]} packages and their dependencies"
  "${pip[@]}" "${names[@]}" >>"$log" 2>&1 || die "installing from the wheelhouse failed; see $log"
  say "    $((SECONDS - step)) s"; step=$SECONDS
  say "2/3 building $FAIRSEQ against this torch (minutes: C++ extensions)"
  # CUDA_HOME would add CUDA extensions, which need nvcc. --no-cache-dir: a
  # wheel built earlier against another torch must not be taken.
  env -u CUDA_HOME "${pip[@]}" --no-build-isolation --no-deps --no-cache-dir "$FAIRSEQ" >>"$log" 2>&1 \
    || die "building $FAIRSEQ failed; see $log"
  say "    $((SECONDS - step)) s"; step=$SECONDS
  say "3/3 this checkout ($root), editable"
  "${pip[@]}" --no-build-isolation --no-deps -e "$root" >>"$log" 2>&1 || die "installing $root failed; see $log"
  # what gpu_check.sh runs: fairseq's training, the plugin, and the check's and the benchmark's code
  "$py" -c 'import fairseq_cli.train, rdrop_fairseq, rdrop_experiments.gpu_check, rdrop_experiments.benchmark' \
    >>"$log" 2>&1 || die "fairseq or this project does not import; see $log"
  say "    $((SECONDS - step)) s"
  say "done in $((SECONDS - start)) s. Run: RDROP_PYTHON=$py bash scripts/gpu_check.sh --quick"
}

case "${1:-}" in
  make) [ $# = 2 ] || die "usage: gpu_wheelhouse.sh make DIR"; make_wheelhouse "$2" ;;
  install) [ $# = 2 ] || die "usage: gpu_wheelhouse.sh install DIR"; install_wheelhouse "$2" ;;
  *) die "usage: gpu_wheelhouse.sh {make|install} DIR" ;;
esac
