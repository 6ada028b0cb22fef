#!/usr/bin/env bash
# Prepares WMT'14 En-De or En-Fr (the R-Drop paper's Transformer-big results:
# 30.91 and 43.95 BLEU) in Python (sacremoses, subword-nmt): En-De exactly as
# fairseq's prepare-wmt14en2de.sh --scaling18 of fairseq pull request 203 (the
# preparation the R-Drop authors pointed to), En-Fr as prepare-wmt14en2fr.sh;
# then binarizes with a joined dictionary (En-De: 32,768 words per side, as
# that pull request's README). See rdrop_experiments/wmt14_data.py for the
# exact protocol.
#
#   bash examples/translation/prepare_wmt14.sh en-de
#   ORIG=/data/wmt14-archives bash examples/translation/prepare_wmt14.sh en-de --no-download
#   bash examples/translation/prepare_wmt14.sh en-de --smoke   # tiny slice of data/ for SMOKE=1 training
#
# Environment: ORIG (archives, default runs/wmt14_orig), TEXT (default
# runs/wmt14_<pair>), DATA (default runs/data-bin/wmt14_<pair>), WORKERS.
# Extra arguments go to prepare_wmt14.py. Expect hours and ~100 GB (en-fr).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

pair="${1:-}"
case "$pair" in
  en-de | en-fr) shift ;;
  *) die "usage: prepare_wmt14.sh {en-de|en-fr} [prepare_wmt14.py options]" ;;
esac
src="${pair%-*}" tgt="${pair#*-}"
if [ "${1:-}" = --smoke ]; then
  [ "$pair" = en-de ] || die "--smoke is for en-de only"
  find_fairseq
  smoke_translation_data en de "${TEXT:-$root/runs/smoke/wmt14/text}" "${DATA:-$root/runs/smoke/wmt14/data-bin}"
  exit 0
fi
defaults ORIG="$root/runs/wmt14_orig" TEXT="$root/runs/wmt14_${src}_${tgt}" \
  DATA="$root/runs/data-bin/wmt14_${src}_${tgt}" WORKERS="$(cpu_count)"
for a in "$@"; do
  if [ "$a" = --no-download ] && [ ! -d "$ORIG" ] && ! dry_run; then
    die "--no-download given but the archive folder ORIG=$ORIG does not exist"
  fi
done

find_translation_tools

run_command python "$here/prepare_wmt14.py" --pair "$pair" --orig "$ORIG" --out "$TEXT" --workers "$WORKERS" "$@"

vocabulary=()
[ "$pair" = en-de ] && vocabulary=(--nwordssrc 32768 --nwordstgt 32768)
run_command fairseq-preprocess --source-lang "$src" --target-lang "$tgt" \
  --trainpref "$TEXT/train" --validpref "$TEXT/valid" --testpref "$TEXT/test" \
  --destdir "$DATA" --joined-dictionary "${vocabulary[@]}" --workers "$WORKERS"
# sacreBLEU needs the untokenized reference next to the binarized data
run_command cp "$TEXT/test.raw.$src" "$TEXT/test.raw.$tgt" "$DATA/"
dry_run || echo "prepare_wmt14.sh: binarized data in $DATA"
