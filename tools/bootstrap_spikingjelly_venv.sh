#!/usr/bin/env bash
# Create .venv-spikingjelly (Python >= 3.11) with the pins of tools/spikingjelly-requirements.txt:
# SpikingJelly's own simulation and NIR exporter for the conformance tests (tools/spikingjelly_export.py).
# Idempotent: reinstalls only when the requirements changed. Prints the venv's python on success.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-spikingjelly
REQ=tools/spikingjelly-requirements.txt

is_py311plus() { "$1" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 11))' >/dev/null 2>&1; }

find_python() {
  local cands=() cand
  cands+=($(ls -d "$HOME"/.pyenv/versions/3.1[1-3].*/bin/python 2>/dev/null | sort -V))
  for cand in python3.11 python3.12 python3.13 python3; do
    if command -v "$cand" >/dev/null 2>&1; then cands+=("$(command -v "$cand")"); fi
  done
  for cand in "${cands[@]}"; do
    if [ -x "$cand" ] && is_py311plus "$cand"; then echo "$cand"; return; fi
  done
  return 1
}

if [ -f "$VENV/.installed" ] && cmp -s "$REQ" "$VENV/.installed"; then
  echo "$VENV/bin/python"; exit 0
fi
if ! py=$(find_python); then
  echo "error: SpikingJelly 2.0 needs Python >= 3.11 and none was found" >&2
  exit 1
fi
rm -rf "$VENV"
"$py" -m venv "$VENV"
if ! { grep -v '^spikingjelly' "$REQ" | "$VENV/bin/python" -m pip install --quiet -r /dev/stdin &&
       "$VENV/bin/python" -m pip install --quiet --no-deps "$(grep '^spikingjelly==' "$REQ")"; } >"$VENV/pip.log" 2>&1; then
  grep -v "is ignored" "$VENV/pip.log" >&2
  echo "error: installing SpikingJelly's venv failed (full log: $VENV/pip.log)" >&2
  exit 1
fi
cp "$REQ" "$VENV/.installed"
echo "$VENV/bin/python"
