# The recipes' shared shell library, for every recipe under examples/
# (translation, language_model, summarization, ...). A recipe script begins
#
#   set -euo pipefail
#   source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
#
# and so has `here` (its own folder) and `root` (the repository), and the
# functions below: error exit, environment defaults, the environment with
# fairseq and the plugin, checks of the training settings, device flags,
# commands that run or (DRY_RUN) are printed, and the SMOKE settings.
#
# DRY_RUN=1: a script prints every command it would run (fairseq's on NUM_GPUS
# CUDA GPUs) to stderr, each as one shell-quoted line after "dry run: ", and
# runs none: it writes nothing, and needs no input data, torch, fairseq or
# virtual environment, so it works on any machine.

here="$(cd "$(dirname "${BASH_SOURCE[1]}")" && pwd)"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

die() { echo "$(basename "$0"): error: $*" >&2; exit 1; }

dry_run() { [ "${DRY_RUN:-0}" = 1 ]; }

# require_file FILE MESSAGE: stops with MESSAGE unless FILE exists (a dry run reads no input).
require_file() { dry_run || [ -f "$1" ] || die "$2"; }

# require_data HINT FILE...: stops unless each FILE of the binarized data in
# $DATA exists, saying HINT (what to run or set).
require_data() {
  local hint="$1" f
  shift
  for f; do
    require_file "$DATA/$f" "binarized data not found: $DATA/$f is missing ($hint)"
  done
}

# defaults NAME=VALUE...: each NAME that is unset or empty becomes VALUE, as
# NAME="${NAME:-VALUE}" (the recipes' environment defaults). The locals start
# with _ so that they hide no NAME.
defaults() {
  local _setting _name
  for _setting; do
    _name="${_setting%%=*}"
    [ -n "${!_name:-}" ] || printf -v "$_name" %s "${_setting#*=}"
  done
}

# training_defaults NAME=VALUE...: the environment defaults every training
# recipe shares, SMOKE=0 and NUM_GPUS=1, then the recipe's own.
training_defaults() { defaults SMOKE=0 NUM_GPUS=1 "$@"; }

# The number of CPUs, the preparation scripts' default WORKERS.
cpu_count() { nproc 2>/dev/null || echo 1; }

# Activates the project's .venv unless fairseq is already on PATH; sets user_dir
# (the plugin's folder) and train (fairseq-train's path, which launchers need).
# A dry run looks for nothing and names the checkout's plugin.
find_fairseq() {
  if dry_run; then
    user_dir="$root/rdrop_fairseq"
    train="$(command -v fairseq-train || echo fairseq-train)"
    return 0
  fi
  command -v fairseq-train >/dev/null || source "$root/scripts/setup_env.sh"
  command -v fairseq-train >/dev/null || die "fairseq-train not found on PATH (install fairseq, see README.md)"
  # find_spec locates the package without importing torch and fairseq.
  user_dir="$(python -c 'import importlib.util as u, os; print(os.path.dirname(u.find_spec("rdrop_fairseq").origin))')" \
    || die "python package rdrop_fairseq is not importable (pip install -e . in $root)"
  train="$(command -v fairseq-train)"
}

# find_fairseq, then stops unless sacremoses and subword-nmt, the translation
# data preparation's packages, are importable (a dry run looks for nothing).
find_translation_tools() {
  find_fairseq
  dry_run || python -c "import sacremoses, subword_nmt" 2>/dev/null \
    || die "python packages sacremoses and subword-nmt are required (pip install sacremoses subword-nmt)"
}

# check_training_settings: the checks every training recipe shares (NUM_GPUS,
# CHECKPOINT_ACTIVATIONS, RDROP_ALPHA); sets the arrays `checkpointing` (see
# checkpoint_activations_flags) and `launcher`, LAUNCHER split into words on
# purpose ("torchrun --nnodes 2 ...").
check_training_settings() {
  check_num_gpus
  checkpoint_activations_flags
  [[ "$RDROP_ALPHA" =~ ^[0-9]+([.][0-9]+)?$ ]] || die "RDROP_ALPHA must be a number >= 0, got '$RDROP_ALPHA'"
  # shellcheck disable=SC2206
  launcher=(${LAUNCHER:-})
}

# NUM_GPUS: 1..8 on one machine; under a multi-node LAUNCHER, the world size.
check_num_gpus() {
  if [ -z "${LAUNCHER:-}" ]; then
    [[ "$NUM_GPUS" =~ ^[1-8]$ ]] || die "NUM_GPUS must be 1..8 on one machine, got '$NUM_GPUS'"
  else
    [[ "$NUM_GPUS" =~ ^[1-9][0-9]*$ ]] || die "NUM_GPUS must be the total number of GPUs, got '$NUM_GPUS'"
  fi
}

# CHECKPOINT_ACTIVATIONS=1 sets the array `checkpointing` to fairseq's
# --checkpoint-activations: every layer's activations are recomputed during
# backward instead of kept, with the forward's dropout masks, so R-Drop's
# doubled batch trains exactly as without (tests/test_activation_checkpointing.py)
# in less memory and more time; --max-tokens and --update-freq stay.
checkpoint_activations_flags() {
  checkpointing=()
  case "${CHECKPOINT_ACTIVATIONS:-0}" in
    0) ;;
    1) checkpointing=(--checkpoint-activations) ;;
    *) die "CHECKPOINT_ACTIVATIONS must be 0 or 1, got '$CHECKPOINT_ACTIVATIONS'" ;;
  esac
}

# Sets the array `device`: distributed world size and --fp16 (FP16=1) on CUDA,
# --cpu without a GPU (only useful to try a recipe). DRY_RUN=1 assumes NUM_GPUS
# CUDA GPUs without looking.
device_flags() {
  device=()
  if dry_run || cuda_available; then
    if [ -z "${LAUNCHER:-}" ] && ! dry_run; then
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

cuda_available() { [ "$(python -c 'import torch; print(int(torch.cuda.is_available()))')" = 1 ]; }

# Sets the array `device` for a one-process evaluation: fairseq's default (the
# GPU) on CUDA, --cpu without one. DRY_RUN=1 assumes a GPU without looking.
inference_device() {
  device=()
  dry_run || cuda_available || device=(--cpu)
}

# run_command [<IN] [>OUT | &>OUT] COMMAND...: runs COMMAND with standard input
# from IN and standard output (with &>, standard error too) to OUT when given,
# or with DRY_RUN=1 prints it with those redirections and goes on, opening no
# file. The line goes to the script's own stderr (fd 3), also where the caller
# redirects the command's. IN or OUT that cannot be opened fails it, COMMAND
# not run, also where the caller tests it (`run_command ... || ...` suspends
# set -e).
exec 3>&2
run_command() {
  local in="" out="" redirect=""
  while [[ "${1:-}" == [\<\>\&]* ]]; do
    case "$1" in
      \<*) in="${1:1}" ;;
      \&\>*) out="${1:2}" redirect="&>" ;;
      *) out="${1:1}" redirect=">" ;;
    esac
    shift
  done
  if dry_run; then
    echo "dry run: $(printf '%q ' "$@")${in:+< $(printf '%q ' "$in")}${out:+$redirect $(printf '%q' "$out")}" >&3
    return 0
  fi
  (
    [ -z "$in" ] || exec < "$in" || die "cannot read $in"
    [ -z "$out" ] || exec > "$out" || die "cannot write $out"
    [ "$redirect" != "&>" ] || exec 2>&1
    set -x
    "$@"
  )
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
  run_command mkdir -p "$text"
  for l in "$src" "$tgt"; do
    run_command ">$text/train.tok.$l" head -n 200 "$shipped/valid.$l"
    run_command ">$text/valid.tok.$l" sed -n 201,240p "$shipped/valid.$l"
    run_command ">$text/test.tok.$l" head -n 40 "$shipped/test.$l"
    for split in train valid test; do
      run_command "<$text/$split.tok.$l" ">$text/$split.$l" \
        python "$root/examples/translation/mt_prep.py" apply-bpe -c "$shipped/code"
    done
    run_command "<$text/test.tok.$l" ">$text/test.raw.$l" python -c 'import sys
from sacremoses import MosesDetokenizer as D
d = D(sys.argv[1])
for line in sys.stdin: print(d.detokenize(line.split()))' "$l"
  done
  run_command fairseq-preprocess --source-lang "$src" --target-lang "$tgt" \
    --trainpref "$text/train" --validpref "$text/valid" --testpref "$text/test" \
    --destdir "$data" --joined-dictionary --workers 1
  run_command cp "$text/test.raw.$src" "$text/test.raw.$tgt" "$data/"
}

# fetch URL FILE: downloads URL to FILE unless FILE exists, never leaving a partial file.
fetch() {
  [ -s "$2" ] && return 0
  dry_run || echo "downloading $1" >&2
  run_command curl -fL --retry 3 -o "$2.part" "$1" || die "download failed: $1 (put the file at $2 by hand)"
  run_command mv "$2.part" "$2"
}

# gpt2_bpe_encode BPE_DIR IN OUT: GPT-2's byte-level BPE (encoder.json and vocab.bpe
# in BPE_DIR) of each line of IN into OUT with fairseq's encoder, empty lines kept.
gpt2_bpe_encode() {
  run_command python -m fairseq.examples.roberta.multiprocessing_bpe_encoder \
    --encoder-json "$1/encoder.json" --vocab-bpe "$1/vocab.bpe" \
    --inputs "$2" --outputs "$3" --workers "$WORKERS" --keep-empty
}

# fetch_gpt2_bpe URL DIR: GPT-2's encoder.json, vocab.bpe and fairseq dictionary from URL into DIR.
fetch_gpt2_bpe() {
  local f
  for f in encoder.json vocab.bpe dict.txt; do
    fetch "$1/$f" "$2/$f"
  done
}

# fetch_pretrained URL ARCHIVE DIR: a fairseq model archive from URL, unpacked into
# DIR (its top folder stripped), unless DIR/model.pt exists.
fetch_pretrained() {
  [ -s "$3/model.pt" ] && return 0
  fetch "$1" "$2"
  run_command mkdir -p "$3"
  run_command tar -xzf "$2" -C "$3" --strip-components 1
}
