#!/usr/bin/env bash
# Create or reuse .venv at the repo root and install the project into it.
# torch is pinned and installed first so that no CUDA build is pulled on CPU machines.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-}"
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
PY=.venv/bin/python
if ! $PY -c "import torch" >/dev/null 2>&1; then
    $PY -m pip install -q --upgrade pip
    $PY -m pip install -q "torch==2.13.0"
fi
stamp=".venv/.installed${EXTRAS:+-$EXTRAS}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    $PY -m pip install -q -e ".${EXTRAS:+[$EXTRAS]}" "torch==2.13.0"
    touch "$stamp"
fi
