"""Whether Triton runs its CPU interpreter (``TRITON_INTERPRET=1``): the launchers then pick small tiles, and kernels
emulate what has no interpreter form (e.g. inline PTX)."""

from __future__ import annotations

import os


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
