#!/usr/bin/env bash
# Trains the R-Drop Transformer on IWSLT'14 De->En with the official recipe's
# settings (paper: 37.25 BLEU; alpha 5, dropout 0.3, 300k updates, 4096 tokens
# per update on one GPU). RDROP_ALPHA=0 trains the baseline with the same
# criterion (one pass, plain label-smoothed cross-entropy).
#
#   bash examples/translation/train_iwslt14.sh
#   NUM_GPUS=4 RDROP_ALPHA=0 bash examples/translation/train_iwslt14.sh --log-interval 50
#
# Environment: DATA, SAVE_DIR, NUM_GPUS (1..8; with LAUNCHER the total over all
# nodes), RDROP_ALPHA (5), SEED (64), MAX_UPDATE (300000), FP16 (1), LAUNCHER
# (a torchrun command line for multi-node), DRY_RUN=1 (print the command line
# and stop), SMOKE=1 (a few updates of a tiny model on the shipped IWSLT'14
# slice, then evaluate.sh; see examples/common.sh). Extra arguments go to
# fairseq-train.
# CHECKPOINT_ACTIVATIONS=1 adds fairseq's --checkpoint-activations: the same batch
# in less memory, for more time per update (README.md, "Performance").
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

training_defaults RDROP_ALPHA=5 SEED=64 FP16=1
if [ "$SMOKE" = 1 ]; then
  defaults DATA="$root/runs/smoke/iwslt14/data-bin" SAVE_DIR="$root/runs/smoke/iwslt14/checkpoints" MAX_UPDATE=3
  [ -f "$DATA/dict.de.txt" ] || DATA="$DATA" bash "$here/prepare_iwslt14.sh" --smoke
fi
defaults DATA="$root/runs/data-bin/iwslt14.tokenized.de-en" MAX_UPDATE=300000 \
  SAVE_DIR="$root/runs/checkpoints/iwslt14_de_en_alpha${RDROP_ALPHA}_seed${SEED}"

require_data "run examples/translation/prepare_iwslt14.sh or set DATA" \
  dict.de.txt dict.en.txt train.de-en.de.bin valid.de-en.de.bin
check_training_settings
[[ "$SEED" =~ ^[0-9]+$ && "$MAX_UPDATE" =~ ^[0-9]+$ ]] || die "SEED and MAX_UPDATE must be integers"

find_fairseq

# The paper's update is one GPU's batch of at most 4096 tokens, its sentence
# count rounded down to a multiple of 8 (fairseq's default). On N GPUs each
# takes floor(4096/N) tokens, and the per-GPU multiple is 8/N where N divides 8
# (so the N batches together are again a multiple of 8), else 1. Measured on a
# training-sized sample of IWSLT'14 lengths, this keeps the sentences per update
# within +0.9% (2 GPUs) to +3.6% (3 GPUs) of one GPU's; with fairseq's multiple
# of 8 on every GPU they would be 3% to 17% fewer (README, "Several GPUs").
update_freq=1
max_tokens=$((4096 / NUM_GPUS))
batch_multiple=$((8 % NUM_GPUS == 0 ? 8 / NUM_GPUS : 1))
smoke=()
[ "$SMOKE" = 1 ] && smoke=("${smoke_encoder_decoder[@]}")

device_flags

run_command "${launcher[@]}" "$train" "$DATA" \
  --user-dir "$user_dir" \
  --source-lang de --target-lang en \
  --arch transformer_iwslt_de_en --share-all-embeddings \
  --optimizer adam --adam-betas '(0.9,0.98)' --lr 5e-4 \
  --lr-scheduler inverse_sqrt --warmup-updates 4000 --warmup-init-lr 1e-07 \
  --weight-decay 0.0001 --dropout 0.3 \
  --criterion label_smoothed_cross_entropy_rdrop --label-smoothing 0.1 --rdrop-alpha "$RDROP_ALPHA" \
  --max-tokens "$max_tokens" --update-freq "$update_freq" --required-batch-size-multiple "$batch_multiple" \
  --max-update "$MAX_UPDATE" --seed "$SEED" \
  --eval-bleu --eval-bleu-args '{"beam": 5, "max_len_a": 1.2, "max_len_b": 10}' \
  --eval-bleu-detok moses --eval-bleu-remove-bpe \
  --best-checkpoint-metric bleu --maximize-best-checkpoint-metric \
  --no-epoch-checkpoints --save-dir "$SAVE_DIR" \
  "${device[@]}" "${checkpointing[@]}" "${smoke[@]}" "$@"
if [ "$SMOKE" = 1 ]; then
  DATA="$DATA" CHECKPOINT="$SAVE_DIR/checkpoint_best.pt" bash "$here/evaluate.sh" iwslt14
fi
