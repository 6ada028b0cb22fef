#!/usr/bin/env bash
# Runs the compatibility matrix (noxfile.py) with the nox of the project's .venv.
# Each session's Python is taken from PATH or, failing that, from pyenv's
# newest patch release of it. Arguments go to nox: "-s fairseq-0.12.2" runs one
# session, "-l" lists them, none runs them all. The console log is also kept
# in runs/compat/; Ctrl-C, SIGTERM and SIGHUP stop every session's processes.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/setup_env.sh"

for version in 3.9 3.10 3.11 3.12; do
  # a pyenv shim answers on PATH but fails unless that version is selected
  if ! "python$version" -c "" >/dev/null 2>&1 && command -v pyenv >/dev/null; then
    newest="$(pyenv versions --bare | grep -E "^${version//./\\.}\.[0-9]+$" | sort -V | tail -1 || true)"
    [ -n "$newest" ] && PATH="$(pyenv root)/versions/$newest/bin:$PATH"
  fi
done
export PATH

mkdir -p "$root/runs/compat"
log="$root/runs/compat/nox-$(date +%Y%m%d-%H%M%S).log"
echo "compat_matrix: full log in $log" >&2
cd "$root"
# Job control gives nox and everything it starts a process group of their
# own, so that one signal reaches them all, and leaves Ctrl-C's default in
# place for them (without it bash ignores SIGINT in background commands).
set -m
nox "$@" > >(tee "$log") 2>&1 &
nox_pid=$!
stop() { kill "-$1" -- "-$nox_pid" 2>/dev/null || true; wait "$nox_pid" || true; exit "$2"; }
trap 'stop INT 130' INT
trap 'stop TERM 143' TERM
trap 'stop TERM 129' HUP
wait "$nox_pid"
