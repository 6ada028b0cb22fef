#!/usr/bin/env bash
# Sets up .venv (first run: a few minutes) and runs the test suite.
# Extra arguments go to pytest, e.g. "-m slow" for the long end-to-end runs.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/setup_env.sh"
cd "$root"
exec python -m pytest "$@"
