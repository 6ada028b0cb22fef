#!/usr/bin/env bash
# Fine-tunes BART-large on CNN/DailyMail with R-Drop, the R-Drop paper's recipe
# (paper: ROUGE-1/2/L 44.51/21.58/41.24 vs BART's 44.16/21.28/40.90): alpha 0.7,
# lr 3e-5 with polynomial decay over 20,000 updates after 500 warm-up updates,
# label smoothing 0.1, dropout and attention dropout 0.1, clip-norm 0.1, and
# 65,536 tokens per update (the official 4 GPUs x 1,024 tokens x update-freq 16).
# RDROP_ALPHA=0 trains the BART baseline with the same criterion (one pass).
#
#   bash examples/summarization/train_cnn_dm.sh
#   NUM_GPUS=8 RDROP_ALPHA=0 bash examples/summarization/train_cnn_dm.sh --log-interval 50
#
# Environment: DATA (runs/data-bin/cnn_dm), BART_DIR (runs/bart.large), SAVE_DIR,
# NUM_GPUS (1..8; with LAUNCHER the total over all nodes), MAX_TOKENS (1024 per
# GPU: the R-Drop batch is doubled, this fits 24 GB), RDROP_ALPHA (0.7), SEED (1),
# FP16 (1), LAUNCHER (a torchrun command line for multi-node), DRY_RUN=1 (print
# the command line and stop), SMOKE=1 (two updates of a tiny bart_large-shaped
# model on the stand-in data of prepare_cnn_dm.sh --smoke, restored from a tiny
# stand-in "pretrained" model trained first by the same command line, then
# evaluate_cnn_dm.sh; see examples/common.sh). Extra arguments go to fairseq-train.
# CHECKPOINT_ACTIVATIONS=1 adds fairseq's --checkpoint-activations: the same batch
# in less memory, for more time per update (README.md, "Performance").
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

training_defaults MAX_TOKENS=1024 RDROP_ALPHA=0.7 SEED=1 FP16=1
if [ "$SMOKE" = 1 ]; then
  defaults DATA="$root/runs/smoke/cnn_dm/data-bin"
  defaults BART_DIR="$(dirname "$DATA")/bart" SAVE_DIR="$(dirname "$DATA")/checkpoints"
  [ -f "$DATA/dict.source.txt" ] || WORK="$(dirname "$DATA")/work" DATA="$DATA" \
    bash "$here/prepare_cnn_dm.sh" --smoke
fi
defaults DATA="$root/runs/data-bin/cnn_dm" BART_DIR="$root/runs/bart.large" \
  SAVE_DIR="$root/runs/checkpoints/cnn_dm_bart_large_alpha${RDROP_ALPHA}_seed${SEED}"
TOTAL_NUM_UPDATES=20000
WARMUP_UPDATES=500
TOKENS_PER_UPDATE=65536

require_data "run examples/summarization/prepare_cnn_dm.sh or set DATA" \
  dict.source.txt dict.target.txt train.source-target.source.bin valid.source-target.source.bin
[ "$SMOKE" = 1 ] || require_file "$BART_DIR/model.pt" "pretrained model not found: $BART_DIR/model.pt (run examples/summarization/prepare_cnn_dm.sh or set BART_DIR)"
check_training_settings
[[ "$SEED" =~ ^[0-9]+$ ]] || die "SEED must be an integer, got '$SEED'"
[[ "$MAX_TOKENS" =~ ^[1-9][0-9]*$ ]] || die "MAX_TOKENS must be a positive integer, got '$MAX_TOKENS'"

find_fairseq

# Keep the paper's tokens per update on any number of GPUs: update-freq is
# rounded up where NUM_GPUS * MAX_TOKENS does not divide 65,536.
per_step=$((NUM_GPUS * MAX_TOKENS))
update_freq=$(((TOKENS_PER_UPDATE + per_step - 1) / per_step))
echo "train_cnn_dm.sh: $NUM_GPUS GPU(s) x $MAX_TOKENS tokens x update-freq $update_freq = $((per_step * update_freq)) tokens per update" >&2

device_flags
smoke=()
[ "$SMOKE" = 1 ] && smoke=("${smoke_encoder_decoder[@]}" --max-update 2 --total-num-update 2
                           --warmup-updates 1 --max-tokens 2048 --update-freq 1)

recipe=(
  --task translation --source-lang source --target-lang target
  --truncate-source --layernorm-embedding --share-all-embeddings --share-decoder-input-output-embed
  --required-batch-size-multiple 1 --skip-invalid-size-inputs-valid-test
  --arch bart_large
  --criterion label_smoothed_cross_entropy_rdrop --label-smoothing 0.1 --rdrop-alpha "$RDROP_ALPHA"
  --dropout 0.1 --attention-dropout 0.1 --weight-decay 0.01
  --optimizer adam --adam-betas "(0.9, 0.999)" --adam-eps 1e-08 --clip-norm 0.1
  --lr-scheduler polynomial_decay --lr 3e-05
  --total-num-update "$TOTAL_NUM_UPDATES" --max-update "$TOTAL_NUM_UPDATES" --warmup-updates "$WARMUP_UPDATES"
  --max-tokens "$MAX_TOKENS" --update-freq "$update_freq" --seed "$SEED"
  --find-unused-parameters --no-epoch-checkpoints
)
if [ "$SMOKE" = 1 ] && [ ! -f "$BART_DIR/model.pt" ]; then
  # The stand-in "pretrained" model: the same command line from scratch, one update.
  run_command "$train" "$DATA" --user-dir "$user_dir" "${recipe[@]}" --save-dir "$BART_DIR/init" \
      "${device[@]}" "${checkpointing[@]}" "${smoke[@]}" --max-update 1 "$@"
  run_command cp "$BART_DIR/init/checkpoint_last.pt" "$BART_DIR/model.pt"
fi
run_command "${launcher[@]}" "$train" "$DATA" \
  --user-dir "$user_dir" \
  --restore-file "$BART_DIR/model.pt" \
  --reset-optimizer --reset-dataloader --reset-meters \
  "${recipe[@]}" --save-dir "$SAVE_DIR" \
  "${device[@]}" "${checkpointing[@]}" "${smoke[@]}" "$@"
if [ "$SMOKE" = 1 ]; then
  DATA="$DATA" CHECKPOINT="$SAVE_DIR/checkpoint_best.pt" GPT2_BPE="$(dirname "$DATA")/work/gpt2_bpe" \
    bash "$here/evaluate_cnn_dm.sh" --beam 2 --min-len 1 --max-len-b 8 --batch-size 4
fi
