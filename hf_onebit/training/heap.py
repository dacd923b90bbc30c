"""Keep freed memory in the process heap while a model trains on the CPU (glibc only).

A training step allocates and frees the same large temporaries every time: the weight gradients, the bf16 copy of the
tied embedding matrix autocast makes for the output layer (49,152 x 576 for SmolLM2) and its float32 gradient. glibc's
``malloc`` serves a block above its mmap threshold (at most 32 MB) from a fresh ``mmap`` and unmaps it on ``free``,
and returns the top of the heap to the kernel once more than the trim threshold is free there, so every step faults
in and zeroes the same pages again (in a virtual machine each fault may also exit to the hypervisor). On an AMD EPYC
Zen 4 (2 cores, KVM, bf16) the forward and backward of a SmolLM2-135M distillation step of 2 x 64 tokens took 1.31x
as long with glibc's defaults (``benchmarks/distill_overhead.py --heap``).

:class:`RetainedHeap` switches ``malloc`` to serving every block from the heap (``M_MMAP_MAX = 0``) and keeping what
is freed there (``M_TRIM_THRESHOLD`` = 2 GiB) until :meth:`RetainedHeap.release`, which restores glibc's defaults
and hands the free memory back (``malloc_trim(0)``). Elsewhere (musl, macOS, Windows) it does nothing and says so
(:attr:`RetainedHeap.active` is False). Setting these parameters ends glibc's own adjustment of the mmap threshold for
the rest of the process (it keeps the value it had reached); blocks mapped before stay mapped.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

logger = logging.getLogger(__name__)

# mallopt parameters (malloc.h) and glibc's defaults for them
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
DEFAULT_TRIM_THRESHOLD = 128 * 1024
DEFAULT_MMAP_MAX = 65536
#: what is kept while training: up to this much free memory at the top of the heap (mallopt takes a C int)
RETAINED_TRIM_THRESHOLD = 2**31 - 1


@functools.lru_cache(maxsize=1)
def _glibc():
    """The C library when it is glibc (it has ``mallopt`` and ``malloc_trim``), else None."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # glibc only  # noqa: B018
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.malloc_trim.argtypes = (ctypes.c_size_t,)
        return libc
    except (OSError, AttributeError):
        return None


class RetainedHeap:
    """From construction until :meth:`release`, freed memory stays in the heap for the next allocation."""

    def __init__(self):
        libc = _glibc()
        self.active = bool(libc is not None and libc.mallopt(M_MMAP_MAX, 0) and
                           libc.mallopt(M_TRIM_THRESHOLD, RETAINED_TRIM_THRESHOLD))
        if libc is None:
            logger.debug("hf_onebit: not glibc, the allocator is left as it is")

    def release(self) -> None:
        """Restore glibc's defaults and return the heap's free memory to the system (idempotent)."""
        if not self.active:
            return
        self.active = False
        libc = _glibc()
        libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
        libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
        libc.malloc_trim(0)

    def __enter__(self) -> "RetainedHeap":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
