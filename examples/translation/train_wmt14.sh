#!/usr/bin/env bash
# Trains R-Drop Transformer-big on WMT'14 En-De (paper: 30.91 BLEU) or En-Fr
# (43.95) with the settings the R-Drop authors published for En-De (alpha 5,
# dropout 0.1, lr 1e-3, --max-tokens 4096 --update-freq 16, 300k updates) on the
# 8 GPUs those fairseq flags are written for: 8 x 16 x 4096 = 524,288 tokens per
# update, kept on 1, 2, 4 or 8 GPUs through --update-freq 128/NUM_GPUS. Then,
# as fairseq's Scaling NMT recipe, averages the last AVG_CHECKPOINTS (10) epoch
# checkpoints for evaluate.sh (AVG_CHECKPOINTS=0: no averaging).
#
#   NUM_GPUS=8 bash examples/translation/train_wmt14.sh       # en-de
#   PAIR=en-fr NUM_GPUS=8 bash examples/translation/train_wmt14.sh
#
# Environment: PAIR (en-de|en-fr), DATA, SAVE_DIR, NUM_GPUS (1, 2, 4 or 8; with
# LAUNCHER the total over all nodes, a divisor of 128), RDROP_ALPHA (5), SEED
# (1), MAX_UPDATE (300000), FP16 (1), AVG_CHECKPOINTS (10), LAUNCHER (e.g.
# torchrun for multi-node), DRY_RUN=1 (print the command line and stop),
# SMOKE=1 (two epochs of a tiny model on a slice of data/, averaging and
# evaluate.sh; see examples/common.sh). Extra arguments are passed to fairseq-train.
# CHECKPOINT_ACTIVATIONS=1 adds fairseq's --checkpoint-activations: the same batch
# in less memory, for more time per update (README.md, "Performance").
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

PAIR="${PAIR:-en-de}"
case "$PAIR" in en-de | en-fr) ;; *) die "PAIR must be en-de or en-fr, got '$PAIR'" ;; esac
src="${PAIR%-*}" tgt="${PAIR#*-}"
training_defaults RDROP_ALPHA=5 SEED=1 FP16=1 AVG_CHECKPOINTS=10
if [ "$SMOKE" = 1 ]; then
  [ "$PAIR" = en-de ] || die "SMOKE=1 is for PAIR=en-de only"
  defaults DATA="$root/runs/smoke/wmt14/data-bin" SAVE_DIR="$root/runs/smoke/wmt14/checkpoints"
  [ -f "$DATA/dict.en.txt" ] || DATA="$DATA" bash "$here/prepare_wmt14.sh" en-de --smoke
fi
defaults DATA="$root/runs/data-bin/wmt14_${src}_${tgt}" MAX_UPDATE=300000 \
  SAVE_DIR="$root/runs/checkpoints/wmt14_${src}_${tgt}_alpha${RDROP_ALPHA}_seed${SEED}"

require_data "run examples/translation/prepare_wmt14.sh $PAIR or set DATA" \
  "dict.$src.txt" "dict.$tgt.txt" "train.$src-$tgt.$src.bin" "valid.$src-$tgt.$src.bin"
check_training_settings
[[ "$SEED" =~ ^[0-9]+$ && "$MAX_UPDATE" =~ ^[0-9]+$ ]] || die "SEED and MAX_UPDATE must be integers"
[[ "$AVG_CHECKPOINTS" =~ ^[0-9]+$ ]] || die "AVG_CHECKPOINTS must be 0 (no averaging) or a positive integer"
(( 128 % NUM_GPUS == 0 )) \
  || die "NUM_GPUS=$NUM_GPUS does not divide the recipe's 128 batches of 4096 tokens per update; use 1, 2, 4 or 8 GPUs per machine (or pass --max-tokens/--update-freq yourself)"

find_fairseq

# Published: --max-tokens 4096 --update-freq 16, fairseq's big-batch flags for
# 8 GPUs. Every GPU batch stays the published one; NUM_GPUS x update-freq = 128.
max_tokens=4096
update_freq=$((128 / NUM_GPUS))
checkpoints=(--no-epoch-checkpoints)
[ "$AVG_CHECKPOINTS" -gt 0 ] && checkpoints=(--keep-last-epochs "$AVG_CHECKPOINTS")
smoke=()
# SMOKE: two epochs of 200 pairs (two updates each), so there are checkpoints to average.
[ "$SMOKE" = 1 ] && smoke=("${smoke_encoder_decoder[@]}" --update-freq 1 --max-epoch 2)

device_flags

run_command "${launcher[@]}" "$train" "$DATA" \
  --user-dir "$user_dir" \
  --source-lang "$src" --target-lang "$tgt" \
  --arch transformer_vaswani_wmt_en_de_big --share-all-embeddings \
  --optimizer adam --adam-betas '(0.9,0.98)' --lr 1e-3 \
  --lr-scheduler inverse_sqrt --warmup-updates 6000 --warmup-init-lr 1e-07 \
  --weight-decay 0.0 --dropout 0.1 --attention-dropout 0.1 --activation-dropout 0.1 \
  --criterion label_smoothed_cross_entropy_rdrop --label-smoothing 0.1 --rdrop-alpha "$RDROP_ALPHA" \
  --max-tokens "$max_tokens" --update-freq "$update_freq" \
  --max-update "$MAX_UPDATE" --seed "$SEED" \
  "${checkpoints[@]}" --save-dir "$SAVE_DIR" \
  "${device[@]}" "${checkpointing[@]}" "${smoke[@]}" "$@"

# Only rank 0 writes checkpoints; under a multi-node LAUNCHER run this on that node.
n_saved=0
[ -d "$SAVE_DIR" ] && n_saved="$(find "$SAVE_DIR" -maxdepth 1 -regex '.*/checkpoint[0-9]+\.pt' | wc -l)"
dry_run && n_saved="$AVG_CHECKPOINTS"  # what a finished training leaves
n_avg=$((n_saved < AVG_CHECKPOINTS ? n_saved : AVG_CHECKPOINTS))
if [ "$n_avg" -gt 0 ]; then
  [ "$n_avg" = "$AVG_CHECKPOINTS" ] || echo "train_wmt14.sh: only $n_avg epoch checkpoints to average" >&2
  run_command python "$root/scripts/average_checkpoints.py" --inputs "$SAVE_DIR" \
    --num-epoch-checkpoints "$n_avg" --output "$SAVE_DIR/checkpoint_avg${AVG_CHECKPOINTS}.pt"
fi
if [ "$SMOKE" = 1 ]; then
  DATA="$DATA" CHECKPOINT="$SAVE_DIR/checkpoint_avg${AVG_CHECKPOINTS}.pt" bash "$here/evaluate.sh" wmt14-en-de
fi
