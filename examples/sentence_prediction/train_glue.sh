#!/usr/bin/env bash
# Fine-tunes RoBERTa-large on one GLUE task with R-Drop: fairseq's GLUE recipe
# (examples/roberta/config/finetuning/<task>.yaml) with the criterion
# sentence_prediction_rdrop. Per task, fairseq's classes, learning rate,
# sentences per update, updates (10 epochs) and warm-up; for all, Adam (0.9, 0.98)
# with eps 1e-6, weight decay 0.1, no clipping, polynomial decay, dropout and
# attention dropout 0.1, at most 512 positions, fp16 with fairseq's loss-scale
# settings, checkpoint_best.pt by dev accuracy (STS-B: regression, dev loss).
# R-Drop's alpha: 1.0, the default of the official R-Drop RoBERTa code, whose
# run.sh does not set it. RDROP_ALPHA=0 trains fairseq's baseline with the same
# criterion (one pass, plain cross-entropy or squared error).
#
# fairseq-train validates on the dev set after every epoch (MNLI: matched as
# valid, mismatched as valid1); its output goes to SAVE_DIR/train.log. Then the
# evaluation step (python -m rdrop_experiments.glue_eval) prints the best dev
# validation from that log and re-scores checkpoint_best.pt on the dev set with
# GLUE's metrics (accuracy; F1 for MRPC and QQP; Matthews correlation for CoLA;
# Pearson and Spearman for STS-B), written to SAVE_DIR/dev_scores.json.
#
#   bash examples/sentence_prediction/train_glue.sh RTE
#   NUM_GPUS=2 RDROP_ALPHA=0 bash examples/sentence_prediction/train_glue.sh MNLI --log-interval 50
#
# Tasks: MNLI QNLI QQP RTE SST-2 MRPC CoLA STS-B (any case).
# Environment: DATA (GLUE_BIN/<TASK>-bin, GLUE_BIN runs/data-bin/glue),
# ROBERTA_DIR (runs/roberta.large), SAVE_DIR, NUM_GPUS (1..8; with LAUNCHER the
# total over all nodes), BATCH_SIZE (sentences per GPU batch; default fairseq's
# sentences per update / NUM_GPUS; --update-freq makes up the rest), RDROP_ALPHA
# (1.0), SEED (1), FP16 (1), LAUNCHER (a torchrun command line for multi-node),
# DRY_RUN=1 (print every command and run none), SMOKE=1 (on the stand-in data of
# prepare_glue.sh --smoke: a tiny roberta_large-shaped masked language model
# trained for one update stands in for roberta.large, three R-Drop updates
# restored from it, then the evaluation, on CPU or GPU). Extra arguments go to
# fairseq-train, after the recipe's, so they override it.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

usage="usage: train_glue.sh TASK [fairseq-train options]; TASK: MNLI QNLI QQP RTE SST-2 MRPC CoLA STS-B"
# fairseq's per-task settings (examples/roberta/config/finetuning/<task>.yaml):
# classes, lr, sentences per update, updates = lr schedule length, warm-up updates.
case "${1:-}" in
  [Mm][Nn][Ll][Ii]) task=MNLI classes=3 lr=1e-05 sentences=32 updates=123873 warmup=7432 ;;
  [Qq][Nn][Ll][Ii]) task=QNLI classes=2 lr=1e-05 sentences=32 updates=33112 warmup=1986 ;;
  [Qq][Qq][Pp]) task=QQP classes=2 lr=1e-05 sentences=32 updates=113272 warmup=28318 ;;
  [Rr][Tt][Ee]) task=RTE classes=2 lr=2e-05 sentences=16 updates=2036 warmup=122 ;;
  [Ss][Ss][Tt]-2 | [Ss][Ss][Tt]2) task=SST-2 classes=2 lr=1e-05 sentences=32 updates=20935 warmup=1256 ;;
  [Mm][Rr][Pp][Cc]) task=MRPC classes=2 lr=1e-05 sentences=16 updates=2296 warmup=137 ;;
  [Cc][Oo][Ll][Aa]) task=CoLA classes=2 lr=1e-05 sentences=16 updates=5336 warmup=320 ;;
  [Ss][Tt][Ss]-[Bb] | [Ss][Tt][Ss][Bb]) task=STS-B classes=1 lr=2e-05 sentences=16 updates=3598 warmup=214 ;;
  *) die "$usage" ;;
esac
shift

training_defaults RDROP_ALPHA=1.0 SEED=1 FP16=1
if [ "$SMOKE" = 1 ]; then
  defaults GLUE_BIN="$root/runs/smoke/glue/data-bin"
  defaults DATA="$GLUE_BIN/$task-bin"
  defaults ROBERTA_DIR="$(dirname "$DATA")/roberta/$task" SAVE_DIR="$(dirname "$DATA")/checkpoints/$task"
  [ -f "$DATA/input0/dict.txt" ] || DATA="$DATA" GLUE_DIR="$(dirname "$DATA")/glue_data" \
    WORK="$(dirname "$DATA")/work" bash "$here/prepare_glue.sh" "$task" --smoke
fi
defaults GLUE_BIN="$root/runs/data-bin/glue"
defaults DATA="$GLUE_BIN/$task-bin" ROBERTA_DIR="$root/runs/roberta.large" \
  SAVE_DIR="$root/runs/checkpoints/glue_${task}_roberta_large_alpha${RDROP_ALPHA}_seed${SEED}"

labels=label/dict.txt
[ "$task" = STS-B ] && labels=label/train.label
require_data "run examples/sentence_prediction/prepare_glue.sh $task or set DATA" \
  input0/dict.txt input0/train.bin input0/valid.bin "$labels"
[ "$SMOKE" = 1 ] || require_file "$ROBERTA_DIR/model.pt" "pretrained model not found: $ROBERTA_DIR/model.pt \
(run examples/sentence_prediction/prepare_glue.sh or set ROBERTA_DIR)"
check_training_settings
[ "${#checkpointing[@]}" = 0 ] || die "CHECKPOINT_ACTIVATIONS=1: fairseq 0.12's RoBERTa has no \
--checkpoint-activations; lower BATCH_SIZE instead (--update-freq keeps the update)"
[[ "$SEED" =~ ^[0-9]+$ ]] || die "SEED must be an integer, got '$SEED'"
defaults BATCH_SIZE=$((sentences / NUM_GPUS))
[[ "$BATCH_SIZE" =~ ^[1-9][0-9]*$ ]] && (( sentences % (NUM_GPUS * BATCH_SIZE) == 0 )) \
  || die "NUM_GPUS x BATCH_SIZE must divide $task's $sentences sentences per update \
(NUM_GPUS=$NUM_GPUS, BATCH_SIZE=$BATCH_SIZE)"

# fairseq's update is one GPU's batch of at most 32 (or 16) sentences and 4,400
# tokens. Here NUM_GPUS x BATCH_SIZE x update_freq sentences make the same update,
# each GPU batch with its share of the 4,400 tokens (at least 512, the longest
# input), so that long sentences shorten a batch where they would shorten fairseq's.
update_freq=$((sentences / (NUM_GPUS * BATCH_SIZE)))
max_tokens=$((4400 * BATCH_SIZE / sentences))
(( max_tokens >= 512 )) || max_tokens=512
echo "train_glue.sh: $task, $NUM_GPUS GPU(s) x $BATCH_SIZE sentences x update-freq $update_freq" \
  "= $sentences sentences per update" >&2

find_fairseq
device_flags

task_flags=()
if [ "$task" = STS-B ]; then
  task_flags=(--regression-target --best-checkpoint-metric loss)
else
  task_flags=(--best-checkpoint-metric accuracy --maximize-best-checkpoint-metric)
fi
[ "$task" = MNLI ] && task_flags+=(--valid-subset valid,valid1)

tiny=(--encoder-layers 1 --encoder-embed-dim 32 --encoder-ffn-embed-dim 64 --encoder-attention-heads 2)
smoke=()
[ "$SMOKE" = 1 ] && smoke=("${tiny[@]}" --max-update 3 --total-num-update 3 --warmup-updates 1
                           --batch-size 8 --update-freq 1 --num-workers 0 --log-interval 1)

recipe=(
  --task sentence_prediction --num-classes "$classes" --init-token 0 --separator-token 2 --max-positions 512
  --arch roberta_large --dropout 0.1 --attention-dropout 0.1
  --criterion sentence_prediction_rdrop --rdrop-alpha "$RDROP_ALPHA" "${task_flags[@]}"
  --optimizer adam --adam-betas "(0.9, 0.98)" --adam-eps 1e-06 --weight-decay 0.1 --clip-norm 0.0
  --lr-scheduler polynomial_decay --lr "$lr" --total-num-update "$updates" --warmup-updates "$warmup"
  --max-update "$updates" --max-epoch 10
  --batch-size "$BATCH_SIZE" --max-tokens "$max_tokens" --update-freq "$update_freq" --required-batch-size-multiple 1
  --fp16-init-scale 4 --threshold-loss-scale 1 --fp16-scale-window 128
  --find-unused-parameters --seed "$SEED" --no-epoch-checkpoints --log-format json --log-interval 200
)
if [ "$SMOKE" = 1 ] && [ ! -f "$ROBERTA_DIR/model.pt" ]; then
  # The stand-in for roberta.large/model.pt: a tiny roberta_large-shaped masked language model (so
  # without a classification head, which fine-tuning adds), one update on the task's input0 text.
  run_command "$train" "$DATA/input0" --user-dir "$user_dir" --task masked_lm --criterion masked_lm \
    --arch roberta_large "${tiny[@]}" --tokens-per-sample 512 --sample-break-mode complete \
    --optimizer adam --lr 1e-04 --batch-size 8 --required-batch-size-multiple 1 --max-update 1 \
    --disable-validation --num-workers 0 --seed "$SEED" --no-epoch-checkpoints --save-dir "$ROBERTA_DIR/init" \
    "${device[@]}"
  run_command cp "$ROBERTA_DIR/init/checkpoint_last.pt" "$ROBERTA_DIR/model.pt"
fi

log="$SAVE_DIR/train.log"
run_command mkdir -p "$SAVE_DIR"
dry_run || echo "train_glue.sh: fairseq-train's output goes to $log (follow it with: tail -f $log)" >&2
run_command "&>$log" "${launcher[@]}" "$train" "$DATA" \
  --user-dir "$user_dir" \
  --restore-file "$ROBERTA_DIR/model.pt" \
  --reset-optimizer --reset-dataloader --reset-meters \
  "${recipe[@]}" --save-dir "$SAVE_DIR" \
  "${device[@]}" "${smoke[@]}" "$@" \
  || { [ ! -f "$log" ] || tail -n 30 "$log" >&2; die "fairseq-train failed (log: $log)"; }

inference_device
run_command python -m rdrop_experiments.glue_eval "$task" --log "$log" \
  --checkpoint "$SAVE_DIR/checkpoint_best.pt" --data "$DATA" --json "$SAVE_DIR/dev_scores.json" "${device[@]}"
