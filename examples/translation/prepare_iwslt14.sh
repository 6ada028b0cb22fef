#!/usr/bin/env bash
# Prepares IWSLT'14 De-En exactly as fairseq's prepare-iwslt14.sh does (the data
# of the R-Drop paper's IWSLT result, 37.25 BLEU), with sacremoses/subword-nmt
# instead of Moses Perl scripts, then binarizes it with a joined dictionary.
#
#   bash examples/translation/prepare_iwslt14.sh                  # downloads de-en.tgz
#   bash examples/translation/prepare_iwslt14.sh --tgz de-en.tgz  # offline
#   bash examples/translation/prepare_iwslt14.sh --orig path/to/de-en
#   bash examples/translation/prepare_iwslt14.sh --smoke   # tiny slice of data/ for SMOKE=1 training
#
# Environment: TEXT (tokenized+BPE text, default runs/iwslt14.tokenized.de-en),
# DATA (binarized output, default runs/data-bin/iwslt14.tokenized.de-en),
# WORKERS (default: number of CPUs). With --smoke the defaults are under
# runs/smoke/iwslt14.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

if [ "${1:-}" = --smoke ]; then
  find_fairseq
  smoke_translation_data de en "${TEXT:-$root/runs/smoke/iwslt14/text}" "${DATA:-$root/runs/smoke/iwslt14/data-bin}"
  exit 0
fi
defaults TEXT="$root/runs/iwslt14.tokenized.de-en" DATA="$root/runs/data-bin/iwslt14.tokenized.de-en" \
  WORKERS="$(cpu_count)"

# Check local inputs before anything slow, so a typo fails at once.
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --tgz) require_file "${args[i+1]:-}" "--tgz file not found: ${args[i+1]:-<missing>}" ;;
    --orig) dry_run || [ -d "${args[i+1]:-}" ] || die "--orig folder not found: ${args[i+1]:-<missing>}" ;;
  esac
done

find_translation_tools

run_command python "$here/prepare_iwslt14.py" --out "$TEXT" --workers "$WORKERS" "$@"

run_command fairseq-preprocess --source-lang de --target-lang en \
  --trainpref "$TEXT/train" --validpref "$TEXT/valid" --testpref "$TEXT/test" \
  --destdir "$DATA" --joined-dictionary --workers "$WORKERS"
dry_run || echo "prepare_iwslt14.sh: binarized data in $DATA"
