"""Run a frozen teacher's linear layers on bf16 weight copies while the student trains under bf16 autocast.

Under ``torch.autocast(dtype=torch.bfloat16)`` every ``F.linear`` of a float32 teacher first rounds its weight to
bf16, on every forward: for SmolLM2-135M that is 135M values converted per step, a third of the teacher's time on a
CPU. Autocast caches these casts only for weights that require grad, which a frozen teacher's do not. Casting the
weights once gives the same bf16 values (round to nearest even either way), so the teacher's outputs are unchanged.

The copies are swapped in only inside :meth:`TeacherWeightCast.applied` (a few hundred attribute assignments per
forward): outside it, and after an exception anywhere, the teacher has its own float32 parameters (ties included).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


class TeacherWeightCast:
    """``dtype`` copies of every float32 ``nn.Linear`` weight of ``model``, in use inside :meth:`applied` only."""

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.bfloat16):
        self.dtype = dtype
        self._swaps: list[tuple[nn.Linear, nn.Parameter, nn.Parameter]] = []
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, nn.Linear) and module.weight.dtype == torch.float32:
                    copy = nn.Parameter(module.weight.detach().to(dtype), requires_grad=False)
                    self._swaps.append((module, module.weight, copy))

    @property
    def count(self) -> int:
        return len(self._swaps)

    @contextmanager
    def applied(self):
        """The copies in place of the originals for the duration of the block; the originals back on any exit."""
        for module, _, copy in self._swaps:
            module.weight = copy
        try:
            yield
        finally:
            for module, original, _ in self._swaps:
                module.weight = original


@contextmanager
def teacher_precision(cast: TeacherWeightCast | None, device_type: str):
    """The teacher's forward precision while a student trains under bf16 autocast: autocast to the copies' dtype with
    ``cast``'s copies in place; nothing at all when ``cast`` is None (a float32 run)."""
    if cast is None:
        yield
        return
    dtype = cast.dtype
    with torch.autocast(device_type, dtype=dtype), cast.applied():
        yield
