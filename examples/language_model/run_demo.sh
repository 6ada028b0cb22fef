#!/usr/bin/env bash
# Baseline vs R-Drop language models on WikiText-2 on a CPU. Sets up .venv on
# first use, then runs demo_wikitext2.py (default budget: about 15 minutes on 2
# cores; --full --seeds 1 2 for the README's table). Arguments go to
# demo_wikitext2.py.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
source "$root/scripts/setup_env.sh"
exec python "$root/examples/language_model/demo_wikitext2.py" "$@"
