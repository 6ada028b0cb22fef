#!/usr/bin/env bash
# Prepares GLUE tasks for RoBERTa fine-tuning with the steps of fairseq's
# examples/roberta/preprocess_GLUE_tasks.sh: the GLUE files (downloaded unless
# already in GLUE_DIR), header lines dropped (not in CoLA's train and dev), QQP's
# lines of other than 6 fields dropped, fairseq's input and label columns per
# task cut out, GPT-2 BPE (fairseq's multiprocessing_bpe_encoder), then
# fairseq-preprocess --only-source with GPT-2's dict.txt for input0 (and input1),
# a label dictionary for the classification tasks, and STS-B's scores divided by
# 5 as float .label files. Also downloads the pretrained roberta.large once.
#
#   bash examples/sentence_prediction/prepare_glue.sh RTE
#   bash examples/sentence_prediction/prepare_glue.sh ALL
#   GLUE_DIR=/data/glue_data bash examples/sentence_prediction/prepare_glue.sh MNLI QNLI   # GLUE already here
#   bash examples/sentence_prediction/prepare_glue.sh RTE --smoke   # stand-in for SMOKE=1 training, offline
#
# Tasks: MNLI QNLI QQP RTE SST-2 MRPC CoLA STS-B (any case), or ALL.
# Environment: GLUE_DIR (runs/glue/glue_data: <TASK>/{train,dev,test}.tsv as
# GLUE's download_glue_data.py lays them out; what is missing is downloaded),
# WORK (runs/glue/work: archives, GPT-2's BPE files, the text per task),
# GLUE_BIN (runs/data-bin/glue: one <TASK>-bin folder per task), DATA (one
# task's binarized folder, instead of GLUE_BIN/<TASK>-bin), ROBERTA_DIR
# (runs/roberta.large), WORKERS (number of CPUs), DRY_RUN=1 (print every command
# and run none).
#
# --smoke (or SMOKE=1) downloads nothing: each task's files are written in GLUE's
# layout (its header, columns and label values) from CLINC150 queries shipped in
# data/classification/clinc150, 48/16/8 rows per split, and a GPT-2-format BPE of
# the 256 byte symbols without merges stands in for GPT-2's; the column, BPE and
# binarization steps below are the real ones. Defaults under runs/smoke/glue.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

usage="usage: prepare_glue.sh {ALL | TASK...} [--smoke]; TASK: MNLI QNLI QQP RTE SST-2 MRPC CoLA STS-B"
all_tasks=(MNLI QNLI QQP RTE SST-2 MRPC CoLA STS-B)
smoke="${SMOKE:-0}"
tasks=()
for arg; do
  case "${arg^^}" in
    --SMOKE) smoke=1 ;;
    ALL) tasks+=("${all_tasks[@]}") ;;
    MNLI | QNLI | QQP | RTE | MRPC) tasks+=("${arg^^}") ;;
    SST-2 | SST2) tasks+=(SST-2) ;;
    COLA) tasks+=(CoLA) ;;
    STS-B | STSB) tasks+=(STS-B) ;;
    *) die "$usage" ;;
  esac
done
[ "${#tasks[@]}" -gt 0 ] || die "$usage"
[ "$smoke" = 1 ] && defaults GLUE_DIR="$root/runs/smoke/glue/glue_data" WORK="$root/runs/smoke/glue/work" \
  GLUE_BIN="$root/runs/smoke/glue/data-bin" WORKERS=1
defaults GLUE_DIR="$root/runs/glue/glue_data" WORK="$root/runs/glue/work" GLUE_BIN="$root/runs/data-bin/glue" \
  ROBERTA_DIR="$root/runs/roberta.large" WORKERS="$(cpu_count)"
[[ "$WORKERS" =~ ^[1-9][0-9]*$ ]] || die "WORKERS must be a positive integer, got '$WORKERS'"
[ -z "${DATA:-}" ] || [ "${#tasks[@]}" = 1 ] || die "DATA names one task's folder; set GLUE_BIN for several tasks"

glue_url=https://dl.fbaipublicfiles.com/glue/data
senteval_url=https://dl.fbaipublicfiles.com/senteval/senteval_data
gpt2_bpe_url=https://dl.fbaipublicfiles.com/fairseq/gpt2_bpe
roberta_url=https://dl.fbaipublicfiles.com/fairseq/models/roberta.large.tar.gz
bpe="$WORK/gpt2_bpe"


# The GLUE archive of each task (MRPC is built from SentEval's files, as GLUE's
# download_glue_data.py does).
glue_archive() {
  case "$1" in
    QQP) echo QQP-clean.zip ;;
    QNLI) echo QNLIv2.zip ;;
    *) echo "$1.zip" ;;
  esac
}

find_fairseq
if [ "$smoke" = 1 ]; then
  run_command python -m rdrop_experiments.glue_data smoke-bpe "$bpe"
  for task in "${tasks[@]}"; do
    run_command python -m rdrop_experiments.glue_data smoke "$task" "$GLUE_DIR/$task"
  done
else
  run_command mkdir -p "$GLUE_DIR" "$WORK/archives" "$bpe"
  fetch_gpt2_bpe "$gpt2_bpe_url" "$bpe"
  fetch_pretrained "$roberta_url" "$WORK/archives/roberta.large.tar.gz" "$ROBERTA_DIR"
  for task in "${tasks[@]}"; do
    [ -f "$GLUE_DIR/$task/train.tsv" ] && continue
    if [ "$task" = MRPC ]; then
      run_command mkdir -p "$GLUE_DIR/MRPC"
      fetch "$senteval_url/msr_paraphrase_train.txt" "$GLUE_DIR/MRPC/msr_paraphrase_train.txt"
      fetch "$senteval_url/msr_paraphrase_test.txt" "$GLUE_DIR/MRPC/msr_paraphrase_test.txt"
      fetch "$glue_url/mrpc_dev_ids.tsv" "$GLUE_DIR/MRPC/dev_ids.tsv"
      run_command python -m rdrop_experiments.glue_data mrpc "$GLUE_DIR/MRPC"
    else
      archive="$(glue_archive "$task")"
      fetch "$glue_url/$archive" "$WORK/archives/$archive"
      run_command python -m zipfile -e "$WORK/archives/$archive" "$GLUE_DIR"
      require_file "$GLUE_DIR/$task/train.tsv" "$archive did not give $GLUE_DIR/$task/train.tsv"
    fi
  done
fi

for task in "${tasks[@]}"; do
  # fairseq's preprocess_GLUE_tasks.sh: the splits, and the 1-based input and label columns.
  splits=(train dev test) validpref=dev testpref=test headerless="" fields=0 dev_label=()
  case "$task" in
    MNLI)
      splits=(train dev_matched dev_mismatched test_matched test_mismatched)
      validpref=dev_matched,dev_mismatched testpref=test_matched,test_mismatched
      inputs=9,10 test_inputs=9,10 label=12 dev_label=(--dev-label 16) ;;
    QQP) inputs=4,5 test_inputs=2,3 label=6 fields=6 ;;
    QNLI | RTE) inputs=2,3 test_inputs=2,3 label=4 ;;
    MRPC) inputs=4,5 test_inputs=4,5 label=1 ;;
    STS-B) inputs=8,9 test_inputs=8,9 label=10 ;;
    SST-2) inputs=1 test_inputs=2 label=2 ;;
    CoLA) inputs=4 test_inputs=2 label=2 headerless=train,dev ;;
  esac
  text="$WORK/text/$task"
  out="${DATA:-$GLUE_BIN/$task-bin}"
  run_command python -m rdrop_experiments.glue_data columns "$GLUE_DIR/$task" "$text" --splits "${splits[*]}" \
    --inputs "$inputs" --test-inputs "$test_inputs" --label "$label" "${dev_label[@]}" \
    --headerless "$headerless" --fields "$fields"

  count=1
  [[ "$inputs" == *,* ]] && count=2
  for split in "${splits[@]}"; do
    for ((i = 0; i < count; i++)); do
      gpt2_bpe_encode "$bpe" "$text/$split.raw.input$i" "$text/$split.input$i"
    done
  done

  run_command rm -rf "$out.tmp"
  for ((i = 0; i < count; i++)); do
    run_command fairseq-preprocess --only-source \
      --trainpref "$text/train.input$i" --validpref "$text/${validpref//,/.input$i,$text/}.input$i" \
      --testpref "$text/${testpref//,/.input$i,$text/}.input$i" \
      --destdir "$out.tmp/input$i" --workers "$WORKERS" --srcdict "$bpe/dict.txt"
  done
  if [ "$task" = STS-B ]; then
    # The similarity scores, 0 to 5, as regression targets between 0 and 1.
    run_command mkdir -p "$out.tmp/label"
    run_command ">$out.tmp/label/train.label" awk '{print $1 / 5.0 }' "$text/train.label"
    run_command ">$out.tmp/label/valid.label" awk '{print $1 / 5.0 }' "$text/dev.label"
  else
    run_command fairseq-preprocess --only-source \
      --trainpref "$text/train.label" --validpref "$text/${validpref//,/.label,$text/}.label" \
      --destdir "$out.tmp/label" --workers "$WORKERS"
  fi
  run_command rm -rf "$out"
  run_command mv "$out.tmp" "$out"
  dry_run || echo "prepare_glue.sh: $task binarized in $out" >&2
done
dry_run || [ "$smoke" = 1 ] || echo "prepare_glue.sh: roberta.large in $ROBERTA_DIR" >&2
