#!/usr/bin/env bash
# The main job: baseline vs R-Drop on Multi30k En->De on a CPU. Sets up .venv
# on first use (about 4 minutes), then runs demo_multi30k.py (default budget:
# one seed, about 14 minutes on 2 cores; --full for the README's table).
# Arguments go to demo_multi30k.py.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
source "$root/scripts/setup_env.sh"
exec python "$root/examples/translation/demo_multi30k.py" "$@"
