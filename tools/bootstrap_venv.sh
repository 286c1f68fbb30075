#!/usr/bin/env bash
# Create .venv from a Python 3.10 interpreter (lava-nc 0.10.0 does not import on 3.11)
# and install snc with pinned dependencies. Idempotent: make calls it only when
# pyproject.toml or constraints.txt changed since the last successful install.
set -euo pipefail
cd "$(dirname "$0")/.."

# A candidate counts only if it runs and is 3.10: pyenv's `python3.10` shim is on PATH
# even when 3.10 is not the selected version, and then it fails when called.
is_py310() { "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))' >/dev/null 2>&1; }

find_python() {
  local cands=()
  if command -v pyenv >/dev/null 2>&1; then
    cands+=($(ls -d "$(pyenv root)"/versions/3.10.*/bin/python 2>/dev/null | sort -rV))
  fi
  cands+=($(ls -d "$HOME"/.pyenv/versions/3.10.*/bin/python 2>/dev/null | sort -rV))
  if command -v python3.10 >/dev/null 2>&1; then cands+=("$(command -v python3.10)"); fi
  cands+=(/usr/bin/python3.10 /usr/local/bin/python3.10)
  local cand
  for cand in "${cands[@]}"; do
    if [ -x "$cand" ] && is_py310 "$cand"; then echo "$cand"; return; fi
  done
  return 1
}

if [ ! -x .venv/bin/python ] || ! is_py310 .venv/bin/python; then
  if ! py=$(find_python); then
    echo "error: snc needs Python 3.10 (lava-nc 0.10.0 does not import on 3.11+)." >&2
    echo "       Found neither 'python3.10' on PATH nor a pyenv 3.10.x (try: pyenv install 3.10.13)." >&2
    exit 1
  fi
  echo "creating .venv with $py"
  rm -rf .venv
  "$py" -m venv .venv
fi
echo "installing snc and its pinned dependencies into .venv (a first install takes about 2 minutes)"
if ! .venv/bin/python -m pip install --quiet -c constraints.txt -e ".[dev]" >.venv/pip.log 2>&1; then
  grep -v "is ignored" .venv/pip.log >&2
  echo "error: pip install failed (full log: .venv/pip.log)" >&2
  exit 1
fi
.venv/bin/python -c "import snc.cli, snc.compiler, snc.runtime, snc.models, lava.magma.core, nir, torch"
touch .venv/.installed
