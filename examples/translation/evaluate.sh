#!/usr/bin/env bash
# Scores a trained model on the test set the way the R-Drop paper reports BLEU
# (fairseq-generate --remove-bpe, compound splitting, fairseq-score: tokenized
# BLEU) and also prints detokenized sacreBLEU with its signature.
#   IWSLT'14 De-En: beam 5, checkpoint_best.pt (lowercased text; sacreBLEU
#   against the detokenized tokenized reference).
#   WMT'14 En-De/En-Fr: beam 4, length penalty 0.6, averaged checkpoint;
#   sacreBLEU against the original newstest2014 reference.
#
#   bash examples/translation/evaluate.sh iwslt14
#   bash examples/translation/evaluate.sh wmt14-en-de
#   CHECKPOINT=ckpt.pt DATA=data-bin/x bash examples/translation/evaluate.sh iwslt14 --batch-size 32
#   GEN_OUT=gen.out bash examples/translation/evaluate.sh iwslt14   # score an existing output only
#
# Environment: DATA, CHECKPOINT, GEN_OUT, BEAM, LENPEN, BATCH_SIZE (128), DRY_RUN=1
# (print the commands, fairseq-generate's for a GPU, and run none).
# Extra arguments are passed to fairseq-generate.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

task="${1:-}"
case "$task" in
  iwslt14)
    src=de tgt=en
    defaults DATA="$root/runs/data-bin/iwslt14.tokenized.de-en" BEAM=5 LENPEN=1 \
      CHECKPOINT="$root/runs/checkpoints/iwslt14_de_en_alpha5_seed64/checkpoint_best.pt"
    raw_ref="" ;;
  wmt14-en-de | wmt14-en-fr)
    src=en tgt="${task#wmt14-en-}"
    defaults DATA="$root/runs/data-bin/wmt14_${src}_${tgt}" BEAM=4 LENPEN=0.6 \
      CHECKPOINT="$root/runs/checkpoints/wmt14_${src}_${tgt}_alpha5_seed1/checkpoint_avg10.pt"
    raw_ref="$DATA/test.raw.$tgt" ;;
  *) die "usage: evaluate.sh {iwslt14|wmt14-en-de|wmt14-en-fr} [fairseq-generate options]" ;;
esac
shift
defaults BATCH_SIZE=128

if [ -n "${GEN_OUT:-}" ]; then
  require_file "$GEN_OUT" "GEN_OUT=$GEN_OUT does not exist"
  gen="$GEN_OUT"
else
  require_data "set DATA" "dict.$src.txt" "test.$src-$tgt.$src.bin"
  require_file "$CHECKPOINT" "checkpoint not found: $CHECKPOINT (set CHECKPOINT)"
fi
[ -z "$raw_ref" ] || require_file "$raw_ref" \
  "untokenized reference for sacreBLEU not found: $raw_ref (written by prepare_wmt14.sh)"
find_fairseq
if [ -z "${GEN_OUT:-}" ]; then
  inference_device
  gen="$(dirname "$CHECKPOINT")/generate-test.$(basename "$CHECKPOINT" .pt).beam$BEAM.txt"
  # fairseq 0.12 drops a last batch that is not a multiple of
  # --required-batch-size-multiple (default 8), i.e. up to 7 test sentences.
  run_command ">$gen" fairseq-generate "$DATA" --user-dir "$user_dir" --source-lang "$src" --target-lang "$tgt" \
    --path "$CHECKPOINT" --gen-subset test --beam "$BEAM" --lenpen "$LENPEN" --remove-bpe \
    --batch-size "$BATCH_SIZE" --required-batch-size-multiple 1 "${device[@]}" "$@"
  dry_run || echo "evaluate.sh: translations in $gen" >&2
fi

ref_args=()
[ -z "$raw_ref" ] || ref_args=(--sacrebleu-ref "$raw_ref")
run_command python "$root/scripts/compound_split_bleu.py" "$gen" --sacrebleu-lang "$tgt" "${ref_args[@]}"
