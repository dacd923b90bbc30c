#!/usr/bin/env bash
# The test command: set up the environment (see setup.sh) and the AArch64 cross tools (cross_tools.sh), then run the
# whole suite. Extra arguments go to pytest.
# HF_ONEBIT_VENV / HF_ONEBIT_TRANSFORMERS select another environment / transformers release (see setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/cross_tools.sh
. "${HF_ONEBIT_VENV:-.venv}/bin/activate"
exec python -m pytest -q -p no:cacheprovider "$@"
