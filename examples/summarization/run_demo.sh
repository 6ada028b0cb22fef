#!/usr/bin/env bash
# Baseline vs R-Drop summarization on SciTLDR on a CPU. Sets up .venv on first
# use, then runs demo_scitldr.py (default budget: about 14 minutes on 2 cores;
# --full --seeds 1 2 3 4 5 for the README's table). Arguments go to demo_scitldr.py.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
source "$root/scripts/setup_env.sh"
exec python "$root/examples/summarization/demo_scitldr.py" "$@"
