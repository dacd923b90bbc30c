#!/usr/bin/env bash
# The main job: set up .venv, then quantize the real SmolLM2-135M to 1 bit, distill it on this machine, save,
# reload with one line, evaluate (perplexity table) and generate. Works offline (the model comes from PyPI).
# Extra arguments go to examples/main_job.py (e.g. --max-steps 600).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec python examples/main_job.py "$@"
