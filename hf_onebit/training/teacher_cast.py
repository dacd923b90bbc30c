"""Hold a frozen teacher's linear weights in bf16 while the student trains under bf16 autocast.

Under ``torch.autocast(dtype=torch.bfloat16)`` every ``F.linear`` of a float32 teacher first rounds its weight to
bf16, on every forward: for SmolLM2-135M that is 135M values converted per step, a third of the teacher's time on a
CPU. Autocast caches these casts only for weights that require grad, which a frozen teacher's do not. Casting the
weights once gives the same bf16 values (round to nearest even either way), so the teacher's outputs are unchanged;
the float32 parameters are kept and put back by :meth:`TeacherWeightCast.restore`.
"""

from __future__ import annotations

import torch
from torch import nn


class TeacherWeightCast:
    """Swap every ``nn.Linear`` weight of ``model`` for a ``dtype`` copy; :meth:`restore` swaps the originals back."""

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.bfloat16):
        self._saved: list[tuple[nn.Linear, nn.Parameter]] = []
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, nn.Linear) and module.weight.dtype == torch.float32:
                    self._saved.append((module, module.weight))
                    module.weight = nn.Parameter(module.weight.detach().to(dtype), requires_grad=False)

    @property
    def count(self) -> int:
        return len(self._saved)

    def restore(self) -> None:
        for module, weight in self._saved:
            module.weight = weight
        self._saved = []
