#!/usr/bin/env bash
# Checks this project on a GPU in minutes: the benchmark with --device cuda,
# every recipe's SMOKE=1 run with --fp16 (and --bf16 where the GPU has it) and
# one resume; prints a table and writes JSON (scripts/gpu_check.py). Without a
# GPU it runs the same on the CPU in float32. Uses the fairseq on PATH, else
# the project's .venv (scripts/setup_env.sh).
#
#   bash scripts/gpu_check.sh --out docs/gpu-check-h200.json
#   bash scripts/gpu_check.sh --only resume --jobs 1
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
command -v fairseq-train >/dev/null || source "$root/scripts/setup_env.sh"
exec python "$root/scripts/gpu_check.py" "$@"
