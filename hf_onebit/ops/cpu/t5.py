"""The t5 runtime layout of ternary weights: 5 codes per byte, built once per weight that stays.

A decode step reads every weight byte once, so its time is the bytes it reads. The 2-bit codes of the on-disk format
(:mod:`hf_onebit.formats.packing`) stream at the memory's read bandwidth already; the t5 layout (defined in ``csrc/ternary.h``)
stores 5 codes per byte as a base-3 number (1.6 bits per weight, rows padded to 320 inputs) and is read with two
128-entry table lookups per 64 bytes, so a 4096->11008 decode call reads 9.2 MB instead of 11.3 MB (~20 % less time).

The CPU backend builds the copy on a weight's second int8 call at the same address (as it gives huge pages: a weight
made afresh for every forward, e.g. accelerate's disk offload, never pays for a conversion) and keeps it in the
layer's call plan (:mod:`.plan`); int8 calls of up to 8 activation rows then read it, all other calls the 2-bit codes.
Results are identical either way. The copy costs 1.6 bits per weight of memory on top of the 2-bit codes; set
``HF_ONEBIT_TERNARY_T5=0`` to do without it. It needs AVX-512 VBMI (Ice Lake, Zen 4 and later).
"""

from __future__ import annotations

import os
import warnings
from typing import Optional

import torch

from .pages import advise_huge_pages

#: Environment variable; "0" disables the t5 copies.
T5_ENV = "HF_ONEBIT_TERNARY_T5"


def enabled() -> bool:
    return os.environ.get(T5_ENV, "1") != "0"


def supported(lib, isa: int) -> bool:
    """True when calls with this ISA would read a t5 copy (the CPU has the kernel) and copies are not disabled."""
    return enabled() and bool(lib.onebit_ternary_t5_supported(isa))


def build_t5(lib, weight: torch.Tensor, in_features: int) -> Optional[torch.Tensor]:
    """The t5 copy of contiguous 2-bit ``weight`` (N, ceil(K / 4)) as uint8 (N, 64 * ceil(K / 320)), in huge pages
    where Linux grants them; None when ``weight`` holds a code that is not ternary (3), which the 2-bit kernels then
    compute with as before, or when there is no memory for the copy (one warning; the 2-bit codes serve every call)."""
    rows = weight.shape[0]
    try:
        t5 = torch.empty((rows, lib.onebit_ternary_t5_row_bytes(in_features)), dtype=torch.uint8)
    except RuntimeError as err:  # torch's out-of-memory on CPU
        _no_memory(in_features, rows, err)
        return None
    rc = lib.onebit_ternary_to_t5(weight.data_ptr(), rows, in_features, t5.data_ptr(), torch.get_num_threads())
    if rc == -2:
        return None
    if rc == -3:
        _no_memory(in_features, rows, "the conversion's tables")
        return None
    if rc != 0:
        raise RuntimeError(f"hf_onebit: t5 conversion failed ({rc}) for a {in_features}->{rows} ternary weight")
    advise_huge_pages(t5)  # it stays with the plan
    return t5


def _no_memory(in_features: int, rows: int, why) -> None:
    warnings.warn(
        f"hf_onebit: no memory for the t5 copy of a {in_features}->{rows} ternary weight ({why}); its decode calls "
        f"read the 2-bit codes (slower, same results). Set {T5_ENV}=0 to stop trying.",
        RuntimeWarning,
        stacklevel=3,
    )
