"""FloatHead: an ``nn.Linear`` (a model's output head, which stays float in a 1-bit model) whose decode-size calls on
a CPU read its bf16 weights with hf_onebit's bandwidth-bound kernel (:func:`hf_onebit.ops.cpu.gemv.bf16_linear`).

It has ``nn.Linear``'s parameters, state dict and results (float32 sums, one rounding to bf16 - the order of the sums
differs); every call the kernel does not serve (more than a few rows, gradients, another dtype or device,
``torch.compile``) is ``nn.Linear``'s own. :func:`hf_onebit.integration.head.use_float_head` puts one in place of a
model's output embeddings, sharing their weight (a tied weight stays tied).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..ops.cpu import gemv


class FloatHead(nn.Linear):
    """``nn.Linear`` with the CPU bf16 decode kernel (see the module docstring)."""

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "FloatHead":
        """A FloatHead holding ``linear``'s own parameters (the same tensors: ties and optimizer state still hold)."""
        head = cls.__new__(cls)
        nn.Module.__init__(head)
        head.in_features, head.out_features = linear.in_features, linear.out_features
        head.register_parameter("weight", linear.weight)
        head.register_parameter("bias", linear.bias)
        head.train(linear.training)
        return head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = None if torch.compiler.is_compiling() else gemv.bf16_linear(x, self.weight, self.bias)
        return super().forward(x) if y is None else y
