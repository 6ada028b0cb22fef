#!/usr/bin/env bash
# Baseline vs R-Drop sentence classification on CLINC150 on a CPU. Sets up
# .venv on first use (about 4 minutes), then runs demo_clinc150.py (default
# budget: one seed, about 6 minutes on 2 cores; --full for the README's table).
# Arguments go to demo_clinc150.py.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
source "$root/scripts/setup_env.sh"
exec python "$root/examples/sentence_prediction/demo_clinc150.py" "$@"
