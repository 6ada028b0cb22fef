# Shared by the translation recipes (sourced, not run): error exit, the
# environment with fairseq and the plugin, GPU-count checks and device flags.
# Expects $root (the repository) to be set by the caller.

die() { echo "$(basename "$0"): error: $*" >&2; exit 1; }

# Activates the project's .venv unless fairseq is already on PATH; sets user_dir.
find_fairseq() {
  command -v fairseq-train >/dev/null || source "$root/scripts/setup_env.sh"
  command -v fairseq-train >/dev/null || die "fairseq-train not found on PATH (install fairseq, see README.md)"
  user_dir="$(python -c 'import rdrop_fairseq,os;print(os.path.dirname(rdrop_fairseq.__file__))')" \
    || die "python package rdrop_fairseq is not importable (pip install -e . in $root)"
}

# NUM_GPUS: 1..8 on one machine; under a multi-node LAUNCHER, the world size.
check_num_gpus() {
  if [ -z "${LAUNCHER:-}" ]; then
    [[ "$NUM_GPUS" =~ ^[1-8]$ ]] || die "NUM_GPUS must be 1..8 on one machine, got '$NUM_GPUS'"
  else
    [[ "$NUM_GPUS" =~ ^[1-9][0-9]*$ ]] || die "NUM_GPUS must be the total number of GPUs, got '$NUM_GPUS'"
  fi
}

# Sets the array `device`: distributed world size and --fp16 (FP16=1) on CUDA,
# --cpu without a GPU (only useful to try a recipe).
device_flags() {
  device=()
  if [ "$(python -c 'import torch; print(int(torch.cuda.is_available()))')" = 1 ]; then
    if [ -z "${LAUNCHER:-}" ]; then
      local gpus
      gpus="$(python -c 'import torch; print(torch.cuda.device_count())')"
      [ "$gpus" -ge "$NUM_GPUS" ] || die "NUM_GPUS=$NUM_GPUS but only $gpus GPU(s) visible"
    fi
    device+=(--distributed-world-size "$NUM_GPUS")
    [ "$FP16" = 1 ] && device+=(--fp16)
  else
    [ "$NUM_GPUS" = 1 ] || die "no CUDA device found, so NUM_GPUS must be 1 (CPU)"
    echo "$(basename "$0"): no CUDA device: running on CPU without --fp16 (only useful to try the script)" >&2
    device+=(--cpu)
  fi
  return 0
}
