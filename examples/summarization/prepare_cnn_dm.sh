#!/usr/bin/env bash
# Prepares CNN/DailyMail for BART-large fine-tuning as in the R-Drop paper (and
# fairseq's BART recipe): downloads the stories, the URL lists, GPT-2 BPE and the
# pretrained bart.large, writes untokenized {train,val,test}.{source,target},
# applies GPT-2 BPE and binarizes with BART's dictionary.
#
#   bash examples/summarization/prepare_cnn_dm.sh
#   WORK=/data/cnn_dm WORKERS=60 bash examples/summarization/prepare_cnn_dm.sh
#   bash examples/summarization/prepare_cnn_dm.sh --smoke   # stand-in for SMOKE=1 training, offline
#
# Environment: WORK (runs/cnn_dm: downloads and text), DATA (runs/data-bin/cnn_dm:
# the binarized data), BART_DIR (runs/bart.large), WORKERS (8). A file already in
# place is not downloaded again, so cnn_stories.tgz and dailymail_stories.tgz
# (https://cs.nyu.edu/~kcho/DMQA/) can be put into WORK by hand when Google
# Drive refuses the scripted download.
#
# --smoke downloads nothing: 40/10/10 SciTLDR abstracts (data/summarization/
# scitldr) with their first TLDR stand in for the articles and highlights, and a
# GPT-2-format BPE of the 256 byte symbols without merges for GPT-2's; the BPE
# and binarization steps below are the real ones. Defaults under runs/smoke/cnn_dm.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

smoke=0
case "${1:-}" in
  "") ;;
  --smoke) smoke=1 ;;
  *) die "usage: prepare_cnn_dm.sh [--smoke]" ;;
esac
[ "$smoke" = 1 ] && defaults WORK="$root/runs/smoke/cnn_dm/work" DATA="$root/runs/smoke/cnn_dm/data-bin" WORKERS=1
defaults WORK="$root/runs/cnn_dm" DATA="$root/runs/data-bin/cnn_dm" BART_DIR="$root/runs/bart.large" WORKERS=8
[[ "$WORKERS" =~ ^[1-9][0-9]*$ ]] || die "WORKERS must be a positive integer, got '$WORKERS'"

url_lists=https://raw.githubusercontent.com/abisee/cnn-dailymail/master/url_lists
gpt2_bpe=https://dl.fbaipublicfiles.com/fairseq/gpt2_bpe
bart_url=https://dl.fbaipublicfiles.com/fairseq/models/bart.large.tar.gz
# Google Drive ids of the DMQA story archives.
cnn_id=0BwmD_VLjROrfTHk4NFg2SndKcjQ
dm_id=0BwmD_VLjROrfM1BxdkxVaTY2bWs

drive_url() { echo "https://drive.usercontent.google.com/download?id=$1&export=download&confirm=t"; }

if [ "$smoke" = 1 ]; then
  find_fairseq
  run_command mkdir -p "$WORK/text" "$WORK/gpt2_bpe"
  run_command python - "$root/data/summarization/scitldr" "$WORK" <<'EOF'
import gzip, json, sys
from pathlib import Path
from fairseq.data.encoders.gpt2_bpe_utils import bytes_to_unicode

scitldr, work = Path(sys.argv[1]), Path(sys.argv[2])
for split, name, n in (("train", "train", 40), ("val", "dev", 10), ("test", "test", 10)):
    with gzip.open(scitldr / f"{name}.jsonl.gz", "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for _, line in zip(range(n), f)]
    for side, text in (("source", lambda r: " ".join(r["source"])), ("target", lambda r: r["target"][0])):
        lines = [" ".join(text(r).split()) for r in rows]
        (work / "text" / f"{split}.{side}").write_text("".join(l + "\n" for l in lines), encoding="utf-8")
symbols = list(bytes_to_unicode().values())
(work / "gpt2_bpe" / "encoder.json").write_text(json.dumps({s: i for i, s in enumerate(symbols)}))
(work / "gpt2_bpe" / "vocab.bpe").write_text("#version: 0.2\n")
(work / "gpt2_bpe" / "dict.txt").write_text("".join(f"{i} 1\n" for i in range(len(symbols))))
EOF
else
run_command mkdir -p "$WORK/url_lists" "$WORK/gpt2_bpe"
for split in train val test; do
  fetch "$url_lists/all_$split.txt" "$WORK/url_lists/all_$split.txt"
done
fetch "$(drive_url "$cnn_id")" "$WORK/cnn_stories.tgz"
fetch "$(drive_url "$dm_id")" "$WORK/dailymail_stories.tgz"
fetch_gpt2_bpe "$gpt2_bpe" "$WORK/gpt2_bpe"
fetch_pretrained "$bart_url" "$WORK/bart.large.tar.gz" "$BART_DIR"

find_fairseq

for archive in cnn dailymail; do
  [ -d "$WORK/$archive/stories" ] || run_command tar -xzf "$WORK/${archive}_stories.tgz" -C "$WORK"
done
run_command python "$here/make_cnn_dm.py" --stories "$WORK/cnn/stories" "$WORK/dailymail/stories" \
  --url-lists "$WORK/url_lists" --out "$WORK/text"
fi

for split in train val test; do
  for side in source target; do
    gpt2_bpe_encode "$WORK/gpt2_bpe" "$WORK/text/$split.$side" "$WORK/text/$split.bpe.$side"
  done
done

run_command rm -rf "$DATA.tmp"
run_command fairseq-preprocess --source-lang source --target-lang target \
  --trainpref "$WORK/text/train.bpe" --validpref "$WORK/text/val.bpe" --testpref "$WORK/text/test.bpe" \
  --destdir "$DATA.tmp" --workers "$WORKERS" \
  --srcdict "$WORK/gpt2_bpe/dict.txt" --tgtdict "$WORK/gpt2_bpe/dict.txt"
run_command rm -rf "$DATA"
run_command mv "$DATA.tmp" "$DATA"
# The untokenized test references, for ROUGE.
run_command cp "$WORK/text/test.source" "$WORK/text/test.target" "$DATA/"
dry_run || echo "prepare_cnn_dm.sh: binarized data in $DATA, bart.large in $BART_DIR" >&2
