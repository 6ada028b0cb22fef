#!/usr/bin/env bash
# Scores a fine-tuned BART on the CNN/DailyMail test set as the R-Drop paper
# reports it (ROUGE-1/2/L F1): summaries from generate_cnn_dm.py (beam 4, lenpen
# 2.0, max_len_b 140, min_len 55, no_repeat_ngram_size 3, fp16 on GPU), then
# ROUGE-1/2/L/Lsum with stemming through rouge-score (scripts/rouge.py), with
# sentences split by pysbd. The last line gives the paper-comparable figures:
# files2rouge's ROUGE-L is the sentence-level one, rouge-score's ROUGE-Lsum.
# Writes the summaries and rouge.json next to the checkpoint.
#
#   bash examples/summarization/evaluate_cnn_dm.sh
#   CHECKPOINT=ckpt/checkpoint_best.pt bash examples/summarization/evaluate_cnn_dm.sh --batch-size 16
#   HYPO=test.hypo bash examples/summarization/evaluate_cnn_dm.sh   # score existing summaries only
#
# Environment: DATA (runs/data-bin/cnn_dm, with test.source and test.target from
# prepare_cnn_dm.sh), CHECKPOINT, HYPO, GPT2_BPE (runs/cnn_dm/gpt2_bpe), DRY_RUN=1
# (print the commands, summarizing on a GPU, and run none). Extra arguments go to
# generate_cnn_dm.py.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

defaults DATA="$root/runs/data-bin/cnn_dm" GPT2_BPE="$root/runs/cnn_dm/gpt2_bpe" \
  CHECKPOINT="$root/runs/checkpoints/cnn_dm_bart_large_alpha0.7_seed1/checkpoint_best.pt"

require_file "$DATA/test.target" "reference summaries not found: $DATA/test.target (run prepare_cnn_dm.sh or set DATA)"
if [ -n "${HYPO:-}" ]; then
  require_file "$HYPO" "HYPO=$HYPO does not exist"
else
  require_file "$CHECKPOINT" "checkpoint not found: $CHECKPOINT (set CHECKPOINT)"
  require_file "$DATA/test.source" "test articles not found: $DATA/test.source (run prepare_cnn_dm.sh or set DATA)"
fi

find_fairseq
hypo="${HYPO:-$(dirname "$CHECKPOINT")/test.$(basename "$CHECKPOINT" .pt).hypo}"
if [ -z "${HYPO:-}" ]; then
  bpe=()
  [ -f "$GPT2_BPE/encoder.json" ] && bpe=(--gpt2-bpe "$GPT2_BPE")
  run_command python "$here/generate_cnn_dm.py" --checkpoint "$CHECKPOINT" --data "$DATA" \
    --source "$DATA/test.source" --out "$hypo.part" "${bpe[@]}" "$@"
  run_command mv "$hypo.part" "$hypo"
  dry_run || echo "evaluate_cnn_dm.sh: summaries in $hypo" >&2
fi
scores="${hypo%.hypo}.rouge.json"
run_command python "$root/scripts/rouge.py" "$hypo" "$DATA/test.target" --split-sentences --json "$scores"
run_command python -c 'import json, sys; s = json.load(open(sys.argv[1]))["scores"]
print("paper-comparable ROUGE-1/2/L F1 (ROUGE-L = ROUGE-Lsum, as files2rouge): "
      + " / ".join("%.2f" % s[m]["fmeasure"] for m in ("rouge1", "rouge2", "rougeLsum")))' "$scores"
