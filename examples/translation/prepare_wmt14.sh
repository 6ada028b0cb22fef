#!/usr/bin/env bash
# Prepares WMT'14 En-De or En-Fr (the R-Drop paper's Transformer-big results:
# 30.91 and 43.95 BLEU) following fairseq's prepare-wmt14en2de.sh --icml17 and
# prepare-wmt14en2fr.sh, in Python (sacremoses, subword-nmt), then binarizes
# it with a joined dictionary. See prepare_wmt14.py for the exact protocol.
#
#   bash examples/translation/prepare_wmt14.sh en-de
#   bash examples/translation/prepare_wmt14.sh en-fr --valid newstest2013
#   ORIG=/data/wmt14-archives bash examples/translation/prepare_wmt14.sh en-de --no-download
#
# Environment: ORIG (archives, default runs/wmt14_orig), TEXT (default
# runs/wmt14_<pair>), DATA (default runs/data-bin/wmt14_<pair>), WORKERS.
# Extra arguments go to prepare_wmt14.py. Expect hours and ~100 GB (en-fr).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
source "$here/common.sh"

pair="${1:-}"
case "$pair" in
  en-de | en-fr) shift ;;
  *) die "usage: prepare_wmt14.sh {en-de|en-fr} [prepare_wmt14.py options]" ;;
esac
src="${pair%-*}" tgt="${pair#*-}"
ORIG="${ORIG:-$root/runs/wmt14_orig}"
TEXT="${TEXT:-$root/runs/wmt14_${src}_${tgt}}"
DATA="${DATA:-$root/runs/data-bin/wmt14_${src}_${tgt}}"
WORKERS="${WORKERS:-$(nproc 2>/dev/null || echo 1)}"
for a in "$@"; do
  if [ "$a" = --no-download ] && [ ! -d "$ORIG" ]; then
    die "--no-download given but the archive folder ORIG=$ORIG does not exist"
  fi
done

command -v fairseq-preprocess >/dev/null || source "$root/scripts/setup_env.sh"
command -v fairseq-preprocess >/dev/null || die "fairseq-preprocess not found on PATH (install fairseq, see README.md)"
python -c "import sacremoses, subword_nmt" 2>/dev/null || die "python packages sacremoses and subword-nmt are required (pip install sacremoses subword-nmt)"

python "$here/prepare_wmt14.py" --pair "$pair" --orig "$ORIG" --out "$TEXT" --workers "$WORKERS" "$@"

fairseq-preprocess --source-lang "$src" --target-lang "$tgt" \
  --trainpref "$TEXT/train" --validpref "$TEXT/valid" --testpref "$TEXT/test" \
  --destdir "$DATA" --joined-dictionary --workers "$WORKERS"
# sacreBLEU needs the untokenized reference next to the binarized data
cp "$TEXT/test.raw.$src" "$TEXT/test.raw.$tgt" "$DATA/"
echo "prepare_wmt14.sh: binarized data in $DATA"
