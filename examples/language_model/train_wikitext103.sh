#!/usr/bin/env bash
# Trains a WikiText-103 language model with R-Drop using the official R-Drop
# scripts' settings (8 GPUs there; the update is kept on 1 to 8 GPUs):
#   transformer  transformer_lm_gpt (12 layers, 768 dim), 512-token samples,
#                --max-tokens 2000 (3 samples) x 128 batches = 384 samples,
#                196,608 tokens per update, Adam lr 5e-4 with 4000 warm-up
#                updates, 50,000 updates, fp16, label_smoothed_cross_entropy_rdrop
#                with --label-smoothing 0
#   adaptive     transformer_lm_wiki103 (adaptive input and softmax, 16 layers),
#                3072-token samples, 73,728 tokens per update, NAG with the
#                cosine schedule, adaptive_loss_rdrop; R-Drop 320,000 updates
#                with fp16, the baseline (RDROP_ALPHA=0) 286,000 without, as the
#                two official scripts
# Both use alpha 1.0. RDROP_ALPHA=0 trains the baseline with the same criterion
# (one pass, plain cross-entropy / adaptive_loss).
#
#   bash examples/language_model/train_wikitext103.sh transformer
#   NUM_GPUS=8 RDROP_ALPHA=0 bash examples/language_model/train_wikitext103.sh adaptive
#
# Environment: DATA, SAVE_DIR, NUM_GPUS (1, 2, 4 or 8 for transformer; 1, 2,
# 3, 4, 6 or 8 for adaptive; with LAUNCHER the total over all nodes), RDROP_ALPHA
# (1.0), SEED (1), MAX_UPDATE, FP16 (1; adaptive baseline 0), LAUNCHER (a
# torchrun command line for multi-node), DRY_RUN=1 (print the command line and
# stop), SMOKE=1 (a few updates of a tiny model on a slice of the shipped
# WikiText-2, then evaluate_wikitext103.sh; see examples/common.sh). Extra
# arguments go to fairseq-train, after the recipe's, so they override it.
# CHECKPOINT_ACTIVATIONS=1 adds fairseq's --checkpoint-activations: the same batch
# in less memory, for more time per update (README.md, "Performance").
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

model="${1:-}"
case "$model" in
  transformer | adaptive) shift ;;
  *) die "usage: train_wikitext103.sh {transformer|adaptive} [fairseq-train options]" ;;
esac

training_defaults RDROP_ALPHA=1.0 SEED=1
if [ "$SMOKE" = 1 ]; then
  defaults DATA="$root/runs/smoke/wikitext/data-bin" SAVE_DIR="$root/runs/smoke/wikitext/checkpoints_$model" \
    MAX_UPDATE=3
  [ -f "$DATA/dict.txt" ] || DATA="$DATA" bash "$here/prepare_wikitext103.sh" --smoke
fi
defaults DATA="$root/runs/data-bin/wikitext-103"

require_data "run examples/language_model/prepare_wikitext103.sh or set DATA" dict.txt train.bin valid.bin
check_training_settings

# The official update, kept on any number of GPUs through --update-freq: every
# GPU batch is the official one (max_tokens), NUM_GPUS x update_freq batches.
is_baseline=0
[[ "$RDROP_ALPHA" =~ ^0+([.]0+)?$ ]] && is_baseline=1
if [ "$model" = transformer ]; then
  defaults MAX_UPDATE=50000 FP16=1
  # 8 GPUs x --update-freq 16 batches of --max-tokens 2000, i.e. 3 samples of 512 tokens
  max_tokens=2000 batches_per_update=128
elif [ "$is_baseline" = 1 ]; then
  defaults MAX_UPDATE=286000 FP16=0  # the official baseline script: 286k updates, float32
  max_tokens=3072 batches_per_update=24  # 8 GPUs x --update-freq 3, one 3072-token sample each
else
  defaults MAX_UPDATE=320000 FP16=1  # the official R-Drop script: 320k updates, fp16
  max_tokens=3072 batches_per_update=24
fi
(( batches_per_update % NUM_GPUS == 0 )) \
  || die "NUM_GPUS=$NUM_GPUS does not divide the $model recipe's $batches_per_update batches per update; use a divisor of $batches_per_update"
update_freq=$((batches_per_update / NUM_GPUS))
[[ "$SEED" =~ ^[0-9]+$ && "$MAX_UPDATE" =~ ^[0-9]+$ ]] || die "SEED and MAX_UPDATE must be integers"
defaults SAVE_DIR="$root/runs/checkpoints/wikitext103_${model}_alpha${RDROP_ALPHA}_seed${SEED}"

if [ "$model" = transformer ]; then
  recipe=(
    --arch transformer_lm_gpt --share-decoder-input-output-embed --dropout 0.1
    --optimizer adam --adam-betas '(0.9,0.98)' --weight-decay 0.01 --clip-norm 0.0
    --lr 5e-4 --lr-scheduler inverse_sqrt --warmup-updates 4000 --warmup-init-lr 1e-07
    --tokens-per-sample 512 --sample-break-mode none --skip-invalid-size-inputs-valid-test
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

smoke=()
if [ "$SMOKE" = 1 ]; then
  smoke=(--decoder-layers 1 --decoder-embed-dim 32 --decoder-input-dim 32 --decoder-output-dim 32
         --decoder-ffn-embed-dim 64 --decoder-attention-heads 2 --tokens-per-sample 64 --max-tokens 512
         --update-freq 1 --num-workers 0)
  [ "$model" = adaptive ] && smoke+=(--adaptive-input-cutoff 500,1500 --adaptive-softmax-cutoff 500,1500)
fi

find_fairseq
device_flags

# legacy_ddp: fairseq's adaptive softmax needs it, and the official R-Drop runs used it for both models.
run_command "${launcher[@]}" "$train" "$DATA" \
  --user-dir "$user_dir" --task language_modeling \
  "${recipe[@]}" \
  --max-tokens "$max_tokens" --update-freq "$update_freq" --max-update "$MAX_UPDATE" --seed "$SEED" \
  --ddp-backend legacy_ddp --no-epoch-checkpoints --save-dir "$SAVE_DIR" \
  "${device[@]}" "${checkpointing[@]}" "${smoke[@]}" "$@"
if [ "$SMOKE" = 1 ]; then
  DATA="$DATA" TOKENS_PER_SAMPLE=64 CONTEXT_WINDOW=32 \
    bash "$here/evaluate_wikitext103.sh" "$SAVE_DIR/checkpoint_best.pt"
fi
