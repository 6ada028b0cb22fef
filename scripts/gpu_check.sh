#!/usr/bin/env bash
# Checks this project on a GPU in minutes: the benchmark with --device cuda,
# every recipe's SMOKE=1 run with --fp16 (and --bf16 where the GPU has it) and
# one resume; prints a table and writes JSON (scripts/gpu_check.py). Without a
# GPU it runs the same on the CPU in float32.
#
#   bash scripts/gpu_check.sh --quick --out docs/gpu-check-h100.json
#   bash scripts/gpu_check.sh --only resume --jobs 1
#
# Runs on a Python that has torch, fairseq and this project (rdrop_fairseq, and
# rdrop_experiments, the check's code) installed, and installs nothing (so it
# needs no network): RDROP_PYTHON if set, else python or python3 on PATH, else
# the project's .venv (RDROP_VENV). To install them on a machine without
# network, see scripts/gpu_wheelhouse.sh.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# What the check imports: torch, fairseq and this project's two packages (an
# install of the project made before rdrop_experiments existed lacks that one).
STACK=(torch fairseq fairseq_cli rdrop_fairseq rdrop_experiments)
# has_stack PYTHON: whether it has them all (looked up, not imported: fast).
has_stack() {
  [ -n "$1" ] && [ -x "$1" ] && "$1" -c 'import importlib.util as u, sys
sys.exit(not all(u.find_spec(m) for m in sys.argv[1:]))' "${STACK[@]}" 2>/dev/null
}

if [ -n "${RDROP_PYTHON:-}" ]; then
  has_stack "$RDROP_PYTHON" && exec "$RDROP_PYTHON" "$root/scripts/gpu_check.py" "$@"
  echo "gpu_check.sh: error: RDROP_PYTHON=$RDROP_PYTHON is not a Python with ${STACK[*]}" >&2
  exit 1
fi
tried=()
for python in "$(command -v python || true)" "$(command -v python3 || true)" "${RDROP_VENV:-$root/.venv}/bin/python"; do
  [ -n "$python" ] || continue
  has_stack "$python" && exec "$python" "$root/scripts/gpu_check.py" "$@"
  tried+=("$python")
done
echo "gpu_check.sh: error: no Python with ${STACK[*]} (tried: ${tried[*]:-none})." >&2
echo "  Without network: bash scripts/gpu_wheelhouse.sh make DIR where the network is, carry DIR over," >&2
echo "  bash scripts/gpu_wheelhouse.sh install DIR here (README.md: the paragraphs on gpu_check.sh)." >&2
echo "  With network: bash scripts/setup_env.sh. Or set RDROP_PYTHON to the Python that has them." >&2
exit 1
