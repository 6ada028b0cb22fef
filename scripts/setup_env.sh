#!/usr/bin/env bash
# Creates the project's virtual environment (.venv, or $RDROP_VENV) with the
# pinned stack. Idempotent: when requirements.txt, pyproject.toml and this
# script are unchanged since the last successful run, it returns at once.
# Source it (". scripts/setup_env.sh") to also activate the environment.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${RDROP_VENV:-$root/.venv}"
python="${PYTHON:-$(command -v python3.11 || command -v python3 || true)}"
torch_spec="${RDROP_TORCH:-torch==2.13.0}"
stamp="$venv/.rdrop-installed"
want="$(cat "$root/requirements.txt" "$root/pyproject.toml" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1) $torch_spec"

if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  [ -n "$python" ] || { echo "setup_env: no python3.11 or python3 on PATH; install Python 3.11 or set PYTHON=/path/to/python3.11" >&2; exit 1; }
  echo "setup_env: installing into $venv (a few minutes the first time)" >&2
  [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
  pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
  # torch first, pinned: an unpinned torch pulled in by fairseq would be a
  # multi-GB CUDA build. GPU users set RDROP_TORCH or install their CUDA
  # torch into the venv first (see README.md).
  "${pip[@]}" install "$torch_spec" setuptools wheel cython numpy==2.4.6
  # fairseq's C++ extensions must build against that torch: no build isolation.
  "${pip[@]}" install --no-build-isolation -r "$root/requirements.txt"
  "${pip[@]}" install --no-build-isolation --no-deps -e "$root"
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH" VIRTUAL_ENV="$venv"
