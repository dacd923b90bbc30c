#!/usr/bin/env bash
# Set up (or reuse) the project's virtual environment at .venv: torch 2.13.0 FIRST (a plain `torch` requirement would
# pull the newest CUDA build, several GB), then hf_onebit with its test extras. Idempotent and quiet when up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
stamp=.venv/.hf_onebit-setup
want="$(cat pyproject.toml | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  python -m pip install -q "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
  python -m pip install -q -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
  python -c "import torch, transformers, hf_onebit; print('hf_onebit setup: torch', torch.__version__, '| transformers', transformers.__version__)"
  echo "$want" > "$stamp"
fi
