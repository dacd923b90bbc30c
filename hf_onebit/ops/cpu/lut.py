"""The lut runtime layout of binary weights: 16 rows side by side for a 4-input lookup kernel on AVX2 CPUs.

On CPUs without AVX-512 the bit-plane int8 kernel spends a shift, an AND, a ``vpmaddubsw`` and an add per 32 weights
and activation row, and a decode call (M = 1) on a 4096->11008 layer took ~2x the time of reading its bytes. The lut
kernel (``csrc/lut.h``, ``csrc/lut_avx2.c``) looks 4 weight bits up in per-call tables of the 16 subset sums of 4
activations, 16 rows at a time with ``vpshufb``: about half the vector operations per weight, and the same int32
sums (results identical to the bit-plane kernel's).

``vpshufb`` needs the 16 rows' bits of the same inputs side by side, which the packed format (one row after another)
does not give, so the CPU backend builds a copy on a weight's second int8 call at the same address (as for huge pages
and the ternary t5 copy: a weight made afresh for every forward never pays for it) and keeps it in the layer's call
plan (:mod:`.plan`); int8 calls of up to eight activation rows then read it, all other calls the packed bits. The copy
costs 1 bit per weight of memory on top of the packed bits; set ``HF_ONEBIT_BINARY_LUT=0`` to do without it. It is
used with the ``avx2`` kernel variant only (AVX-512 CPUs have faster kernels on the packed bits).
"""

from __future__ import annotations

import os
import warnings
from typing import Optional

import torch

from .pages import advise_huge_pages

#: Environment variable; "0" disables the lut copies.
LUT_ENV = "HF_ONEBIT_BINARY_LUT"


def enabled() -> bool:
    return os.environ.get(LUT_ENV, "1") != "0"


def supported(lib, isa: int) -> bool:
    """True when calls with this ISA would read a lut copy (the library has the kernel) and copies are not disabled."""
    return enabled() and bool(lib.onebit_binary_lut_supported(isa))


def build_lut(lib, weight: torch.Tensor) -> Optional[torch.Tensor]:
    """The lut copy of contiguous packed ``weight`` (N, kbytes) as flat uint8, in huge pages where Linux grants them;
    None when there is no memory for it (one warning; the packed bits serve every call)."""
    rows, kbytes = weight.shape
    try:
        copy = torch.empty(lib.onebit_binary_lut_bytes(rows, kbytes), dtype=torch.uint8)
    except RuntimeError as err:  # torch's out-of-memory on CPU
        warnings.warn(
            f"hf_onebit: no memory for the lut copy of a {rows} x {kbytes}-byte binary weight ({err}); its decode "
            f"calls read the packed bits (slower, same results). Set {LUT_ENV}=0 to stop trying.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    rc = lib.onebit_binary_to_lut(weight.data_ptr(), rows, kbytes, copy.data_ptr(), torch.get_num_threads())
    if rc != 0:
        raise RuntimeError(f"hf_onebit: lut conversion failed ({rc}) for a {rows} x {kbytes}-byte binary weight")
    advise_huge_pages(copy)  # it stays with the plan
    return copy
