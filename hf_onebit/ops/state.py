"""Runtime state the backends keep per tensor: one table for every backend.

A backend prepares things for the tensors it reads - the CPU backend a call plan per packed weight (``cpu/plan.py``),
float32 copies of scale vectors and the huge-page advice of a weight (``cpu/pages.py``); the Triton backend the
repacked words of a weight (``triton/repack.py``). All of it lives here, beside the tensor and never on it: an
attribute would travel with the tensor into ``torch.save`` (where ``torch.load``'s default ``weights_only=True``
refuses to read it back) and ``copy.deepcopy``. Each backend names its own slots (``"cpu.plan"``, ``"triton.words"``).

A tensor's entry goes when the tensor is freed; nothing here holds a strong reference to a tensor it is kept for
(what a slot holds must not either, or the entry would keep its own key alive). A lookup is a dict access by
``id`` plus an identity check through a weak reference, cheap enough for the per-call decode path.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

__all__ = ["get", "put", "drop", "tracked", "clear"]


class _Entry:
    __slots__ = ("owner", "slots")

    def __init__(self, owner: weakref.ref):
        self.owner = owner
        self.slots: dict[str, Any] = {}


#: id(tensor) -> its entry; removed when the tensor is freed (put)
_entries: dict[int, _Entry] = {}


def _entry(t: torch.Tensor):
    entry = _entries.get(id(t))
    return entry if entry is not None and entry.owner() is t else None


def get(t: torch.Tensor, slot: str, default: Any = None) -> Any:
    """What ``slot`` holds for ``t``, or ``default``."""
    entry = _entries.get(id(t))
    if entry is None or entry.owner() is not t:
        return default
    return entry.slots.get(slot, default)


def put(t: torch.Tensor, slot: str, value: Any) -> bool:
    """Keep ``value`` in ``slot`` for ``t`` (replacing what was there); False when ``t`` takes no weak reference (then
    nothing is kept)."""
    entry = _entry(t)
    if entry is None:
        try:
            owner = weakref.ref(t)
        except TypeError:
            return False
        tid = id(t)
        entry = _entries[tid] = _Entry(owner)
        weakref.finalize(t, _forget, tid)
    entry.slots[slot] = value
    return True


def drop(t: torch.Tensor, slot: str | None = None) -> None:
    """Forget ``slot`` of ``t`` (every slot when None)."""
    entry = _entry(t)
    if entry is None:
        return
    if slot is None:
        entry.slots.clear()
    else:
        entry.slots.pop(slot, None)


def tracked(slot: str | None = None) -> int:
    """How many live tensors have an entry (with ``slot`` filled, when given)."""
    return sum(1 for e in list(_entries.values()) if e.owner() is not None and (slot is None or slot in e.slots))


def clear(slot: str | None = None) -> None:
    """Forget ``slot`` of every tensor (everything when None)."""
    for entry in list(_entries.values()):
        if slot is None:
            entry.slots.clear()
        else:
            entry.slots.pop(slot, None)


def _forget(tid: int) -> None:
    entry = _entries.get(tid)
    if entry is not None and entry.owner() is None:  # (the id may already belong to a newer tensor's entry)
        del _entries[tid]
