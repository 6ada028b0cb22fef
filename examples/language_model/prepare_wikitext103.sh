#!/usr/bin/env bash
# Prepares WikiText-103 (the data of the R-Drop paper's language-modelling
# results) as fairseq's language-model example does: the word-level
# wiki.{train,valid,test}.tokens, binarized with fairseq-preprocess --only-source.
#
#   bash examples/language_model/prepare_wikitext103.sh                          # downloads the zip
#   bash examples/language_model/prepare_wikitext103.sh --zip wikitext-103-v1.zip  # offline
#   bash examples/language_model/prepare_wikitext103.sh --smoke  # slice of the shipped WikiText-2, for SMOKE=1
#
# Environment: ORIG (unpacked text, default runs/wikitext-103), DATA (binarized
# output, default runs/data-bin/wikitext-103), WORKERS (default: number of CPUs).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

URL="https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-103-v1.zip"
defaults ORIG="$root/runs/wikitext-103" DATA="$root/runs/data-bin/wikitext-103" WORKERS="$(cpu_count)"

zip="" text=""
case "${1:-}" in
  "") ;;
  --smoke)
    # The first 400 training and 100 valid/test lines of data/language_modeling/wikitext-2
    # (the same word-level format), under runs/smoke/wikitext unless DATA is set.
    defaults DATA="$root/runs/smoke/wikitext/data-bin"
    text="$(dirname "$DATA")/text"
    shipped="$root/data/language_modeling/wikitext-2"
    WORKERS=1 ;;
  --zip)
    zip="${2:-}"
    require_file "$zip" "--zip file not found: ${zip:-<missing>}" ;;
  *) die "usage: prepare_wikitext103.sh [--zip wikitext-103-v1.zip | --smoke]" ;;
esac
[[ "$WORKERS" =~ ^[1-9][0-9]*$ ]] || die "WORKERS must be a positive integer, got '$WORKERS'"

find_fairseq

if [ -n "$text" ]; then
  run_command mkdir -p "$text"
  run_command ">$text/wiki.train.tokens" python -c 'import gzip, itertools, sys
sys.stdout.writelines(itertools.islice(gzip.open(sys.argv[1], "rt", encoding="utf-8"), 400))' \
    "$shipped/wiki.train.tokens.gz"
  run_command ">$text/wiki.valid.tokens" head -n 100 "$shipped/wiki.valid.tokens"
  run_command ">$text/wiki.test.tokens" head -n 100 "$shipped/wiki.test.tokens"
else
  run_command mkdir -p "$ORIG"
  if [ -z "$zip" ]; then
    zip="$ORIG/wikitext-103-v1.zip"
    if [ ! -f "$zip" ]; then
      dry_run || echo "prepare_wikitext103.sh: downloading $URL" >&2
      run_command python -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' \
        "$URL" "$zip.part" || die "download of $URL failed; fetch it elsewhere and pass --zip FILE"
      run_command mv "$zip.part" "$zip"
    fi
  fi
  run_command python -m zipfile -e "$zip" "$ORIG"
  text="$ORIG/wikitext-103"
  for split in train valid test; do
    require_file "$text/wiki.$split.tokens" "$zip does not contain wikitext-103/wiki.$split.tokens"
  done
fi

run_command fairseq-preprocess --only-source \
  --trainpref "$text/wiki.train.tokens" --validpref "$text/wiki.valid.tokens" --testpref "$text/wiki.test.tokens" \
  --destdir "$DATA" --workers "$WORKERS"
dry_run || echo "prepare_wikitext103.sh: binarized data in $DATA"
