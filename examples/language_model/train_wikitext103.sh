#!/usr/bin/env bash
# Trains a WikiText-103 language model with R-Drop using the paper's settings:
#   transformer  transformer_lm_gpt (12 layers, 768 dim), 512-token samples,
#                262,144 tokens per update, Adam lr 5e-4 with 4000 warm-up
#                updates, 50,000 updates, label_smoothed_cross_entropy_rdrop
#                with --label-smoothing 0
#   adaptive     transformer_lm_wiki103 (adaptive input and softmax, 16 layers),
#                3072-token samples, 73,728 tokens per update, NAG with the
#                cosine schedule, 286,000 updates, adaptive_loss_rdrop
# Both use alpha 1.0. RDROP_ALPHA=0 trains the baseline with the same criterion
# (one pass, plain cross-entropy / adaptive_loss).
#
#   bash examples/language_model/train_wikitext103.sh transformer
#   NUM_GPUS=8 RDROP_ALPHA=0 bash examples/language_model/train_wikitext103.sh adaptive
#
# Environment: DATA, SAVE_DIR, NUM_GPUS (1, 2, 4 or 8 for transformer; 1, 2,
# 3, 4, 6 or 8 for adaptive; with LAUNCHER the total over all nodes), RDROP_ALPHA
# (1.0), SEED (1), MAX_UPDATE, FP16 (1), LAUNCHER (a torchrun command line for
# multi-node). Extra arguments go to fairseq-train, after the recipe's, so they
# override it.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
source "$root/examples/translation/common.sh"

model="${1:-}"
case "$model" in
  transformer | adaptive) shift ;;
  *) die "usage: train_wikitext103.sh {transformer|adaptive} [fairseq-train options]" ;;
esac

DATA="${DATA:-$root/runs/data-bin/wikitext-103}"
NUM_GPUS="${NUM_GPUS:-1}"
RDROP_ALPHA="${RDROP_ALPHA:-1.0}"
SEED="${SEED:-1}"
FP16="${FP16:-1}"

for f in dict.txt train.bin valid.bin; do
  [ -f "$DATA/$f" ] || die "binarized data not found: $DATA/$f is missing (run examples/language_model/prepare_wikitext103.sh or set DATA)"
done
check_num_gpus
[[ "$RDROP_ALPHA" =~ ^[0-9]+([.][0-9]+)?$ ]] || die "RDROP_ALPHA must be a number >= 0, got '$RDROP_ALPHA'"

# The paper's update size, kept on any number of GPUs through --update-freq:
# per GPU max_tokens tokens, times update_freq, times NUM_GPUS.
if [ "$model" = transformer ]; then
  MAX_UPDATE="${MAX_UPDATE:-50000}"
  max_tokens=2048 batches_per_update=128  # 128 x 2048 = 262,144 tokens = 512 samples of 512
else
  MAX_UPDATE="${MAX_UPDATE:-286000}"
  max_tokens=3072 batches_per_update=24  # 24 x 3072 = 73,728 tokens = 24 samples of 3072
fi
(( batches_per_update % NUM_GPUS == 0 )) \
  || die "NUM_GPUS=$NUM_GPUS does not divide the $model recipe's $batches_per_update batches per update; use a divisor of $batches_per_update"
update_freq=$((batches_per_update / NUM_GPUS))
[[ "$SEED" =~ ^[0-9]+$ && "$MAX_UPDATE" =~ ^[0-9]+$ ]] || die "SEED and MAX_UPDATE must be integers"
SAVE_DIR="${SAVE_DIR:-$root/runs/checkpoints/wikitext103_${model}_alpha${RDROP_ALPHA}_seed${SEED}}"

if [ "$model" = transformer ]; then
  recipe=(
    --arch transformer_lm_gpt --share-decoder-input-output-embed --dropout 0.1
    --optimizer adam --adam-betas '(0.9,0.98)' --weight-decay 0.01 --clip-norm 0.0
    --lr 5e-4 --lr-scheduler inverse_sqrt --warmup-updates 4000 --warmup-init-lr 1e-07
    --tokens-per-sample 512 --sample-break-mode none
    --criterion label_smoothed_cross_entropy_rdrop --label-smoothing 0 --rdrop-alpha "$RDROP_ALPHA"
  )
else
  recipe=(
    --arch transformer_lm_wiki103
    --optimizer nag --clip-norm 0.1
    --lr 1.0 --lr-scheduler cosine --t-mult 2 --lr-period-updates 270000 --lr-shrink 0.75
    --warmup-updates 16000 --warmup-init-lr 1e-07 --min-lr 1e-4 --stop-min-lr 1e-09
    --tokens-per-sample 3072 --sample-break-mode none --skip-invalid-size-inputs-valid-test
    --criterion adaptive_loss_rdrop --rdrop-alpha "$RDROP_ALPHA"
  )
fi

find_fairseq
device_flags

# LAUNCHER is split into words on purpose ("torchrun --nnodes 2 ...").
# shellcheck disable=SC2206
launcher=(${LAUNCHER:-})
train="$(command -v fairseq-train)"
set -x
# legacy_ddp: fairseq's adaptive softmax needs it, and the official R-Drop runs used it for both models.
"${launcher[@]}" "$train" "$DATA" \
  --user-dir "$user_dir" --task language_modeling \
  "${recipe[@]}" \
  --max-tokens "$max_tokens" --update-freq "$update_freq" --max-update "$MAX_UPDATE" --seed "$SEED" \
  --ddp-backend legacy_ddp --no-epoch-checkpoints --save-dir "$SAVE_DIR" \
  "${device[@]}" "$@"
