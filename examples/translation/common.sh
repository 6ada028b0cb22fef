# Shared by the recipes (sourced, not run): error exit, the environment with
# fairseq and the plugin, GPU-count checks, device flags and DRY_RUN.
# Expects $root (the repository) to be set by the caller.
#
# DRY_RUN=1: a training or evaluation script prints the fairseq command line it
# would run (on NUM_GPUS CUDA GPUs when training) to stderr as one shell-quoted
# line after "dry run: ", and exits, on any machine.

die() { echo "$(basename "$0"): error: $*" >&2; exit 1; }

# Activates the project's .venv unless fairseq is already on PATH; sets user_dir.
find_fairseq() {
  command -v fairseq-train >/dev/null || source "$root/scripts/setup_env.sh"
  command -v fairseq-train >/dev/null || die "fairseq-train not found on PATH (install fairseq, see README.md)"
  # find_spec locates the package without importing torch and fairseq.
  user_dir="$(python -c 'import importlib.util as u, os; print(os.path.dirname(u.find_spec("rdrop_fairseq").origin))')" \
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
# --cpu without a GPU (only useful to try a recipe). DRY_RUN=1 assumes NUM_GPUS
# CUDA GPUs without looking.
device_flags() {
  device=()
  if [ "${DRY_RUN:-0}" = 1 ] || [ "$(python -c 'import torch; print(int(torch.cuda.is_available()))')" = 1 ]; then
    if [ -z "${LAUNCHER:-}" ] && [ "${DRY_RUN:-0}" != 1 ]; then
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

# Runs the command line, or with DRY_RUN=1 prints it and exits. The line goes to
# the script's own stderr (fd 3), also where the caller redirects the command's.
exec 3>&2
run_command() {
  if [ "${DRY_RUN:-0}" = 1 ]; then
    echo "dry run: $(printf '%q ' "$@")" >&3
    exit 0
  fi
  ( set -x; "$@" )
}

# SMOKE=1: a training script runs its own command line on a tiny slice of the
# data shipped in data/ (made by the prepare script's --smoke) with these
# architecture overrides appended, for MAX_UPDATE (3) updates, then evaluates.
# It checks the whole path on CPU or GPU in minutes; the scores mean nothing.
smoke_encoder_decoder=(
  --encoder-layers 1 --decoder-layers 1 --encoder-embed-dim 32 --decoder-embed-dim 32
  --encoder-ffn-embed-dim 64 --decoder-ffn-embed-dim 64 --encoder-attention-heads 2 --decoder-attention-heads 2
  --num-workers 0
)

# smoke_translation_data SRC TGT TEXT DATA: the shipped IWSLT'14 text (tokenized,
# lowercased; data/translation/iwslt14-de-en) with its BPE codes, 200 training,
# 40 valid and 40 test pairs in direction SRC->TGT, the untokenized test text
# as test.raw.*, binarized with a joined dictionary.
smoke_translation_data() {
  local src="$1" tgt="$2" text="$3" data="$4" shipped="$root/data/translation/iwslt14-de-en" l
  mkdir -p "$text"
  for l in "$src" "$tgt"; do
    head -n 200 "$shipped/valid.$l" > "$text/train.tok.$l"
    sed -n 201,240p "$shipped/valid.$l" > "$text/valid.tok.$l"
    head -n 40 "$shipped/test.$l" > "$text/test.tok.$l"
    for split in train valid test; do
      python "$root/examples/translation/mt_prep.py" apply-bpe -c "$shipped/code" \
        < "$text/$split.tok.$l" > "$text/$split.$l"
    done
    python -c 'import sys; from sacremoses import MosesDetokenizer as D; d = D(sys.argv[1])
for line in sys.stdin: print(d.detokenize(line.split()))' "$l" < "$text/test.tok.$l" > "$text/test.raw.$l"
  done
  fairseq-preprocess --source-lang "$src" --target-lang "$tgt" \
    --trainpref "$text/train" --validpref "$text/valid" --testpref "$text/test" \
    --destdir "$data" --joined-dictionary --workers 1
  cp "$text/test.raw.$src" "$text/test.raw.$tgt" "$data/"
}
