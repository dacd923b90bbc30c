"""Denormal floats flushed to zero on every CPU thread that torch and the kernels compute on.

``torch.set_flush_denormal`` sets the control register of the calling thread only: the other threads of torch's
OpenMP pool go on computing with denormal values, which costs many times a normal operation on x86 CPUs. The kernel
library runs on that same pool (csrc/pool.h), so one call of ``onebit_set_flush_denormal`` (csrc/fpenv.c) sets every
thread of it.
"""

from __future__ import annotations

import torch

from .binding import library


def set_flush_denormal(on: bool, every_thread: bool = True) -> int:
    """Flush denormal floats to zero (``on``) or compute them again, on the calling thread (``torch.set_flush_denormal``)
    and, with ``every_thread``, on the ``torch.get_num_threads()`` threads of the pool through the kernel library
    (which also covers AArch64, where torch's call does nothing).

    Returns how many threads were set: 0 where neither has such a switch for this CPU, 1 where only torch's call on
    the calling thread did (``every_thread`` False, or the kernel library unavailable), else the pool's thread count."""
    if not isinstance(on, bool):
        raise ValueError(f"on: got {on!r}; allowed: True or False")
    calling_thread = torch.set_flush_denormal(on)
    lib = library() if every_thread else None
    threads = lib.onebit_set_flush_denormal(int(on), torch.get_num_threads()) if lib is not None else 0
    return threads or int(calling_thread)
