"""FloatHead: an ``nn.Linear`` (a model's output head, which stays float in a 1-bit model) whose decode-size calls on
a CPU run hf_onebit's bandwidth-bound kernels (:mod:`hf_onebit.ops.cpu.gemv`).

It has ``nn.Linear``'s parameters, state dict and results (float32 sums, one rounding to bf16 - the order of the sums
differs); every call the kernels do not serve (more than a few rows, gradients, another dtype or device,
``torch.compile``) is ``nn.Linear``'s own. :func:`hf_onebit.integration.head.use_float_head` puts one in place of a
model's output embeddings, sharing their weight (a tied weight stays tied).

``weight_bits`` chooses what a served call reads: ``16`` the float weights themselves; ``8`` an int8 copy with one
float scale per row (:func:`~hf_onebit.ops.cpu.gemv.quantize_rows_int8`), half the bytes of bf16. The copy is made
at the first served call and made again when the weight changes (another tensor, or an in-place update such as an
optimizer step); it is not a parameter or buffer, so the state dict and what is saved stay the float weights.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from ..config import check_head_bits
from ..ops.cpu import gemv


class FloatHead(nn.Linear):
    """``nn.Linear`` with the CPU decode kernels (see the module docstring)."""

    weight_bits: int = 16
    #: ``(key, q, scale)`` of the int8 copy, or None before the first int8 call (see :meth:`int8_weight`)
    _int8: Optional[tuple] = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, weight_bits: int = 16) -> "FloatHead":
        """A FloatHead holding ``linear``'s own parameters (the same tensors: ties and optimizer state still hold)."""
        head = cls.__new__(cls)
        nn.Module.__init__(head)
        head.in_features, head.out_features = linear.in_features, linear.out_features
        head.register_parameter("weight", linear.weight)
        head.register_parameter("bias", linear.bias)
        head.weight_bits = check_head_bits(weight_bits, "FloatHead.weight_bits")
        head.train(linear.training)
        return head

    def int8_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The int8 copy ``(q, scale)`` of the current weight, made (again) when the weight has changed."""
        w = self.weight
        key = (w.data_ptr(), w._version, tuple(w.shape), w.dtype)
        cached = self._int8
        if cached is None or cached[0] != key:
            cached = (key, *gemv.quantize_rows_int8(w.detach()))
            self._int8 = cached
        return cached[1], cached[2]

    def _served_int8(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        if self.weight.dtype not in (torch.bfloat16, torch.float32):
            return None
        if gemv.rows_served(x, self.in_features, self.out_features, (self.weight.dtype,), self.weight,
                            self.bias) is None:
            return None  # checked before the copy is made: prefill and training calls never make one
        q, scale = self.int8_weight()
        return gemv.int8_linear(x, q, scale, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return super().forward(x)
        if self.weight_bits == 8:
            y = self._served_int8(x)
        else:
            y = gemv.bf16_linear(x, self.weight, self.bias)
        return super().forward(x) if y is None else y

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, weight_bits={self.weight_bits}"
