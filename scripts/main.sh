#!/usr/bin/env bash
# The main job: set up .venv, then quantize the real SmolLM2-135M to 1 bit, distill it on this machine, save,
# reload with one line, evaluate (perplexity table) and generate. Works offline (the model comes from PyPI).
# Extra arguments go to examples/main_job.py (e.g. --max-steps 600).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
# tcmalloc, when the system has it (Debian: libtcmalloc-minimal4), keeps the large activation buffers of a training
# step mapped instead of faulting them in again every step: ~17 % faster distillation on a CPU (docs/distillation.md).
# HF_ONEBIT_NO_TCMALLOC=1 or an LD_PRELOAD of your own turns this off.
if [ -z "${LD_PRELOAD:-}" ] && [ -z "${HF_ONEBIT_NO_TCMALLOC:-}" ]; then
    for lib in /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 /usr/lib64/libtcmalloc_minimal.so.4 \
               /usr/lib/libtcmalloc_minimal.so.4; do
        if [ -f "$lib" ]; then
            export LD_PRELOAD="$lib"
            echo "main.sh: preloading $lib"
            break
        fi
    done
fi
exec python examples/main_job.py "$@"
