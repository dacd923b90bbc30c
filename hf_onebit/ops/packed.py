"""PackedWeight: everything a backend reads about one packed layer, as one value.

A layer's forward hands the op layer one :class:`PackedWeight` - the packed codes, the two scale vectors, the bias,
the true input width and the format - and every backend kernel takes ``(x, packed, act_bits)``. A new property of a
packed weight is a new field here, not a new positional argument through every layer of calls. The value holds
references to the module's tensors (no copies) and is built per call (~0.4 us: a slotted dataclass, not frozen -
freezing triples that; treat it as read-only).

The runtime layouts backends derive from a weight (the CPU backend's call plan and huge-page advice, the Triton
backend's repacked words) are kept per tensor in :mod:`hf_onebit.ops.state`, beside ``data``: a module's buffers stay
plain tensors that ``state_dict``, ``torch.save`` and ``.to()`` treat like any other. :func:`hf_onebit.ops.prepare`
builds them ahead of the first call.

The custom ops of :mod:`hf_onebit.ops` keep plain tensor arguments (a ``torch.library`` schema takes tensors and
scalars only); their device entries rebuild the value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..formats.packing import packed_columns

__all__ = ["PackedWeight"]


@dataclass(slots=True)
class PackedWeight:
    """``y = ((x * scale_in) @ Q.T) * scale_out (+ bias)`` with ``Q`` unpacked from ``data``.

    data         uint8 ``(out_features, packed_columns(in_features, weight_format))``: sign bits or ternary codes
    scale_in     ``(in_features,)`` float: ``g``
    scale_out    ``(out_features,)`` float: ``h``
    bias         ``(out_features,)`` float, or None
    in_features  the true input width (the last byte of a row may be padding)
    weight_format ``"binary"`` or ``"ternary"`` (hf_onebit.formats)
    """

    data: torch.Tensor
    scale_in: torch.Tensor
    scale_out: torch.Tensor
    bias: Optional[torch.Tensor]
    in_features: int
    weight_format: str = "binary"

    @property
    def out_features(self) -> int:
        return self.data.shape[0]

    def check(self, x_features: Optional[int] = None) -> None:
        """Raise ValueError, naming the field, when the shapes disagree (with each other, and with an input of
        ``x_features`` columns when given)."""
        K, N = self.in_features, self.data.shape[0]
        if x_features is not None and x_features != K:
            raise ValueError(f"x: last dimension {x_features} does not match in_features={K}")
        cols = packed_columns(K, self.weight_format)
        if self.data.dim() != 2 or self.data.shape[1] != cols:
            raise ValueError(
                f"weight: packed shape {tuple(self.data.shape)}, expected ({N}, {cols}) for K={K} "
                f"({self.weight_format} format)"
            )
        if self.scale_in.numel() != K:
            raise ValueError(f"scale_in: {self.scale_in.numel()} elements, expected in_features={K}")
        if self.scale_out.numel() != N:
            raise ValueError(f"scale_out: {self.scale_out.numel()} elements, expected out_features={N}")
        if self.bias is not None and self.bias.numel() != N:
            raise ValueError(f"bias: {self.bias.numel()} elements, expected out_features={N}")
