"""Huge pages for the weights the CPU kernels stream.

A decode call (M = 1) reads each packed weight byte once, from memory. With 4 KiB pages every 4 KiB of weights is a
TLB miss (a page walk) and a point where the hardware prefetchers stop; a 1-bit layer goes through its pages 16 times
faster than a bf16 layer of the same shape, so it feels this more. Backed by 2 MiB transparent huge pages the same
kernel is 6-10 % faster on a 4096->11008 layer (docs/benchmarks-cpu.md); torch's dense bf16 matmul is not consistently
helped by it.

The CPU backend calls :func:`advise_huge_pages` the second time it sees the same weight tensor at the same address
(:func:`advise_resident`), so that weights made afresh for every forward are left alone. Linux only; elsewhere, for
tensors under 2 MiB, or when the kernel refuses (older than 6.1, THP disabled), it does nothing. Set
``HF_ONEBIT_HUGE_PAGES=0`` to turn it off. What was seen or advised is kept in the tensor's ``"cpu.pages"`` slot of
the backends' per-tensor state (:mod:`hf_onebit.ops.state`), not on the tensor.
"""

from __future__ import annotations

import ctypes
import os
import sys

import torch

from .. import state

#: Size of a transparent huge page on x86-64 and most aarch64 kernels.
HUGE_PAGE = 2 << 20
#: Environment variable; "0" disables the advice.
HUGE_PAGES_ENV = "HF_ONEBIT_HUGE_PAGES"

_MADV_HUGEPAGE = 14  # back this range with huge pages when khugepaged gets to it
_MADV_COLLAPSE = 25  # Linux >= 6.1: collapse it into huge pages now (synchronously)
#: the slot of hf_onebit.ops.state that holds ("seen" | "done", address) for a tensor
SLOT = "cpu.pages"

_libc = None


def _madvise():
    """libc's madvise, or None where the C library does not offer it."""
    global _libc
    if _libc is None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            libc.madvise.restype = ctypes.c_int
            _libc = libc
        except (OSError, AttributeError):
            _libc = False
    return _libc.madvise if _libc else None


def enabled() -> bool:
    return sys.platform.startswith("linux") and os.environ.get(HUGE_PAGES_ENV, "1") != "0"


def advise_huge_pages(t: torch.Tensor) -> int:
    """Ask Linux to back the whole 2 MiB pages inside ``t``'s memory with huge pages; returns the bytes it collapsed
    now (0 if none: too small, not on Linux, disabled, or refused)."""
    if not enabled() or t.device.type != "cpu":
        return 0
    start = t.data_ptr()
    end = start + t.numel() * t.element_size()
    first = -(-start // HUGE_PAGE) * HUGE_PAGE
    last = end // HUGE_PAGE * HUGE_PAGE
    if last <= first:
        return 0
    madvise = _madvise()
    if madvise is None:
        return 0
    if madvise(first, last - first, _MADV_COLLAPSE) == 0:
        return last - first
    madvise(first, last - first, _MADV_HUGEPAGE)  # older kernels: at least let khugepaged do it later
    return 0


def _mark(t: torch.Tensor, seen: tuple) -> bool:
    # False for a tensor that takes no weak reference: never advised (rather than every time)
    return state.put(t, SLOT, seen)


def advise_once(t: torch.Tensor) -> None:
    """:func:`advise_huge_pages` now, unless this tensor (at this address) was advised before; for loaders and
    benchmarks that know the tensor stays."""
    ptr = t.data_ptr()
    if state.get(t, SLOT) != ("done", ptr) and _mark(t, ("done", ptr)):
        advise_huge_pages(t)


def advise_resident(t: torch.Tensor) -> None:
    """What the CPU backend calls on every kernel call: advise a weight the *second* time the same tensor comes by
    at the same address. A weight that stays (a loaded model) is advised once, on its second call; weights
    materialised afresh for each forward (accelerate's disk offload) are new tensors every time and are never
    collapsed, which would cost ~9 ms per 5.6 MB each time."""
    ptr = t.data_ptr()
    seen = state.get(t, SLOT)
    if seen == ("done", ptr):
        return
    if seen == ("seen", ptr):
        if _mark(t, ("done", ptr)):
            advise_huge_pages(t)
        return
    _mark(t, ("seen", ptr))
