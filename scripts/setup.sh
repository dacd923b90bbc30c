#!/usr/bin/env bash
# Set up (or reuse) the project's virtual environment: torch 2.13.0 FIRST (a plain `torch` requirement would pull the
# newest CUDA build, several GB), then hf_onebit with its test extras. Idempotent and quiet when up to date.
#   HF_ONEBIT_VENV          the environment's folder (default .venv)
#   HF_ONEBIT_TRANSFORMERS  a transformers requirement to install instead of the newest release pyproject.toml allows,
#                           e.g. "transformers==5.20.2" (the oldest supported: what CI's second run uses)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${HF_ONEBIT_VENV:-.venv}
PIN=${HF_ONEBIT_TRANSFORMERS:-}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
. "$VENV/bin/activate"
stamp="$VENV/.hf_onebit-setup"
want="$( (cat pyproject.toml; echo "$PIN") | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  python -m pip install -q "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
  # llama-cpp-python (test extra) compiles llama.cpp: for the AVX2 baseline every supported CPU class has, so that a
  # cached wheel runs on any of them (a -march=native build can die with SIGILL on another CPU); CMAKE_ARGS overrides.
  CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON}" \
    CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
    python -m pip install -q -e ".[test]" ${PIN:+"$PIN"} 2>&1 | grep -v "^WARNING: Location" || true
  python -c "import torch, transformers, hf_onebit; print('hf_onebit setup: torch', torch.__version__, '| transformers', transformers.__version__)"
  echo "$want" > "$stamp"
fi
