#!/usr/bin/env bash
# Trains R-Drop Transformer-big on WMT'14 En-De (paper: 30.91 BLEU) or En-Fr
# (43.95) with the settings the R-Drop authors published for En-De (alpha 5,
# dropout 0.1, lr 1e-3, 4096 tokens x 16 per update, 300k updates), then
# averages the last AVG_CHECKPOINTS checkpoints for evaluate.sh.
#
#   bash examples/translation/train_wmt14.sh                 # en-de, 1 GPU
#   PAIR=en-fr NUM_GPUS=8 bash examples/translation/train_wmt14.sh
#
# Environment: PAIR (en-de|en-fr), DATA, SAVE_DIR, NUM_GPUS (1..8; with LAUNCHER
# the total over all nodes), RDROP_ALPHA (5), SEED (1), MAX_UPDATE (300000), FP16 (1),
# SAVE_INTERVAL_UPDATES (2000), AVG_CHECKPOINTS (10), LAUNCHER (e.g. torchrun
# for multi-node). Extra arguments are passed to fairseq-train.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
source "$here/common.sh"

PAIR="${PAIR:-en-de}"
case "$PAIR" in en-de | en-fr) ;; *) die "PAIR must be en-de or en-fr, got '$PAIR'" ;; esac
src="${PAIR%-*}" tgt="${PAIR#*-}"
DATA="${DATA:-$root/runs/data-bin/wmt14_${src}_${tgt}}"
NUM_GPUS="${NUM_GPUS:-1}"
RDROP_ALPHA="${RDROP_ALPHA:-5}"
SEED="${SEED:-1}"
MAX_UPDATE="${MAX_UPDATE:-300000}"
FP16="${FP16:-1}"
SAVE_INTERVAL_UPDATES="${SAVE_INTERVAL_UPDATES:-2000}"
AVG_CHECKPOINTS="${AVG_CHECKPOINTS:-10}"
SAVE_DIR="${SAVE_DIR:-$root/runs/checkpoints/wmt14_${src}_${tgt}_alpha${RDROP_ALPHA}_seed${SEED}}"

for f in "dict.$src.txt" "dict.$tgt.txt" "train.$src-$tgt.$src.bin" "valid.$src-$tgt.$src.bin"; do
  [ -f "$DATA/$f" ] || die "binarized data not found: $DATA/$f is missing (run examples/translation/prepare_wmt14.sh $PAIR or set DATA)"
done
check_num_gpus
[[ "$RDROP_ALPHA" =~ ^[0-9]+([.][0-9]+)?$ ]] || die "RDROP_ALPHA must be a number >= 0, got '$RDROP_ALPHA'"
[[ "$SEED" =~ ^[0-9]+$ && "$MAX_UPDATE" =~ ^[0-9]+$ ]] || die "SEED and MAX_UPDATE must be integers"
[[ "$AVG_CHECKPOINTS" =~ ^[1-9][0-9]*$ ]] || die "AVG_CHECKPOINTS must be a positive integer"

find_fairseq

# Published: --max-tokens 4096 --update-freq 16 = 65,536 tokens per update.
# Split it over NUM_GPUS: update-freq = ceil(16/NUM_GPUS) and max-tokens so
# that NUM_GPUS x update-freq x max-tokens stays 65,536 (within rounding).
update_freq=$(((16 + NUM_GPUS - 1) / NUM_GPUS))
max_tokens=$((4096 * 16 / (NUM_GPUS * update_freq)))

device_flags

# shellcheck disable=SC2206
launcher=(${LAUNCHER:-})
train="$(command -v fairseq-train)"
set -x
"${launcher[@]}" "$train" "$DATA" \
  --user-dir "$user_dir" \
  --source-lang "$src" --target-lang "$tgt" \
  --arch transformer_vaswani_wmt_en_de_big --share-all-embeddings \
  --optimizer adam --adam-betas '(0.9,0.98)' --lr 1e-3 \
  --lr-scheduler inverse_sqrt --warmup-updates 6000 --warmup-init-lr 1e-07 \
  --weight-decay 0.0 --dropout 0.1 --attention-dropout 0.1 --activation-dropout 0.1 \
  --criterion label_smoothed_cross_entropy_rdrop --label-smoothing 0.1 --rdrop-alpha "$RDROP_ALPHA" \
  --max-tokens "$max_tokens" --update-freq "$update_freq" \
  --max-update "$MAX_UPDATE" --seed "$SEED" \
  --save-interval-updates "$SAVE_INTERVAL_UPDATES" --keep-interval-updates "$AVG_CHECKPOINTS" \
  --no-epoch-checkpoints --save-dir "$SAVE_DIR" \
  "${device[@]}" "$@"
set +x

# Only rank 0 writes checkpoints; under a multi-node LAUNCHER run this on that node.
n_saved=0
[ -d "$SAVE_DIR" ] && n_saved="$(find "$SAVE_DIR" -maxdepth 1 -name 'checkpoint_*_*.pt' | wc -l)"
n_avg=$((n_saved < AVG_CHECKPOINTS ? n_saved : AVG_CHECKPOINTS))
if [ "$n_avg" -gt 0 ]; then
  [ "$n_avg" = "$AVG_CHECKPOINTS" ] || echo "train_wmt14.sh: only $n_avg update checkpoints to average" >&2
  python "$root/scripts/average_checkpoints.py" --inputs "$SAVE_DIR" \
    --num-update-checkpoints "$n_avg" --output "$SAVE_DIR/checkpoint_avg${AVG_CHECKPOINTS}.pt"
fi
