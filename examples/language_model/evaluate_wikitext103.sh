#!/usr/bin/env bash
# Perplexity of a trained WikiText-103 language model on the validation and
# test sets, as the R-Drop paper reports it: fairseq-eval-lm over 512-token
# blocks, each scored with a context window of 400 tokens before it.
#
#   bash examples/language_model/evaluate_wikitext103.sh runs/checkpoints/wikitext103_transformer_alpha1.0_seed1/checkpoint_best.pt
#   DATA=data-bin/wikitext-103 SUBSETS=test bash examples/language_model/evaluate_wikitext103.sh ckpt.pt --batch-size 4
#
# Environment: DATA, SUBSETS ("valid test"), TOKENS_PER_SAMPLE (512),
# CONTEXT_WINDOW (400), DRY_RUN=1 (print every subset's fairseq-eval-lm command
# line, for a GPU, and run none). Extra arguments go to fairseq-eval-lm. Writes each
# subset's output next to the checkpoint and prints one line per subset.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

checkpoint="${1:-}"
[ -n "$checkpoint" ] || die "usage: evaluate_wikitext103.sh CHECKPOINT [fairseq-eval-lm options]"
shift
require_file "$checkpoint" "checkpoint not found: $checkpoint"
defaults DATA="$root/runs/data-bin/wikitext-103" SUBSETS="valid test" TOKENS_PER_SAMPLE=512 CONTEXT_WINDOW=400
require_data "set DATA" dict.txt
for subset in $SUBSETS; do
  require_file "$DATA/$subset.bin" "subset '$subset' not found: $DATA/$subset.bin is missing"
done
(( CONTEXT_WINDOW < TOKENS_PER_SAMPLE )) \
  || die "CONTEXT_WINDOW ($CONTEXT_WINDOW) must be smaller than TOKENS_PER_SAMPLE ($TOKENS_PER_SAMPLE)"

find_fairseq
inference_device

for subset in $SUBSETS; do
  out="$(dirname "$checkpoint")/eval_lm.$(basename "$checkpoint" .pt).$subset.txt"
  run_command "&>$out" fairseq-eval-lm "$DATA" --user-dir "$user_dir" --path "$checkpoint" --gen-subset "$subset" \
    --batch-size 2 --tokens-per-sample "$TOKENS_PER_SAMPLE" --context-window "$CONTEXT_WINDOW" \
    "${device[@]}" "$@" || { [ ! -f "$out" ] || tail -n 20 "$out" >&2; die "fairseq-eval-lm failed on $subset (log: $out)"; }
  dry_run && continue
  result="$(grep -o 'Loss (base 2): [0-9.]*, Perplexity: [0-9.]*' "$out" | tail -n 1)"
  [ -n "$result" ] || die "no perplexity in $out"
  echo "$subset: $result"
done
