"""The weight formats: one object per format holds everything that differs between 1-bit signs and ternary codes.

===========  ==================  ========================  ==============================  ==================
format       values              stored                    hard quantizer (training)       initial fit
===========  ==================  ========================  ==============================  ==================
``binary``   ``{-1, +1}``        8 per byte (sign bits)    sign, tanh-derivative gradient  SVID / NMF of ``|W|``
``ternary``  ``{-1, 0, +1}``     4 per byte (2-bit codes)  row-absmean ternary, STE        absmean codes + LSQ
===========  ==================  ========================  ==============================  ==================

Code that needs a format-specific step asks the layer's :class:`WeightFormat` (``get_format(module.weight_format)``)
instead of comparing strings. The byte layouts themselves are defined in :mod:`hf_onebit.formats.packing`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .init import absmean_ternary, svid_rank1, ternary_init
from .packing import (WEIGHT_FORMATS, WEIGHTS_PER_BYTE, check_weight_format, pack_signs, pack_ternary, unpack_signs,
                      unpack_ternary)


class SignWithTanhGrad(torch.autograd.Function):
    """``sign(w)`` (with ``sign(0) = +1``) forward; ``grad * (1 - tanh(w)^2)`` backward (OneBit's estimator)."""

    @staticmethod
    def forward(ctx, w):
        ctx.save_for_backward(w)
        return torch.where(w >= 0, 1.0, -1.0).to(w.dtype)

    @staticmethod
    def backward(ctx, grad):
        (w,) = ctx.saved_tensors
        return grad * (1 - torch.tanh(w) ** 2)


def hard_sign(w: torch.Tensor) -> torch.Tensor:
    """The hard quantizer of binary layers: ``sign(w)`` in ``{-1, +1}`` with OneBit's tanh-derivative gradient."""
    return SignWithTanhGrad.apply(w)


class TernaryWithSTE(torch.autograd.Function):
    """:func:`~hf_onebit.formats.init.absmean_ternary` forward (per-row ``clamp(round(w / mean|w_row|), -1, 1)``, the row
    scale detached); straight-through backward (the gradient passes unchanged)."""

    @staticmethod
    def forward(ctx, w):
        return absmean_ternary(w).to(w.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad


def hard_ternary(w: torch.Tensor) -> torch.Tensor:
    """The hard quantizer of ternary layers: values in {-1, 0, +1}, straight-through gradient."""
    return TernaryWithSTE.apply(w)


def _signs(weight: torch.Tensor) -> torch.Tensor:
    """``sign(w)`` as int8 (``sign(0) = +1``): one byte per weight, never a float copy of a large layer."""
    return (weight >= 0).to(torch.int8) * 2 - 1


def _ternary_codes(weight: torch.Tensor) -> torch.Tensor:
    return absmean_ternary(weight).to(torch.int8)


def _binary_fit(weight: torch.Tensor, method: str, iters: int):
    h, g = svid_rank1(weight, method=method, iters=iters)
    return _signs(weight), g, h


def _ternary_fit(weight: torch.Tensor, method: str, iters: int):
    values, h, g = ternary_init(weight, method=method, iters=iters)
    return values, g, h


@dataclass(frozen=True)
class WeightFormat:
    """What one weight format does differently; the two instances are :data:`BINARY` and :data:`TERNARY`."""

    #: ``"binary"`` or ``"ternary"``: the value of ``OneBitConfig.weight_format`` and ``OneBitLinear.weight_format``
    name: str
    #: weights stored per byte of a packed row
    weights_per_byte: int
    #: how messages and model cards name a layer of this format
    label: str
    #: the distillation recipe used when none is given (:mod:`hf_onebit.training.recipes`)
    default_recipe: str
    #: latent float weight -> its codes as floats, with the format's training gradient (the layer's default binarizer)
    hard: Callable[[torch.Tensor], torch.Tensor] = field(repr=False)
    _pack: Callable[[torch.Tensor], torch.Tensor] = field(repr=False)
    _unpack: Callable[..., torch.Tensor] = field(repr=False)
    _codes: Callable[[torch.Tensor], torch.Tensor] = field(repr=False)
    _fit: Callable = field(repr=False)

    @property
    def is_ternary(self) -> bool:
        return self is TERNARY

    # The two formats are singletons (``is_ternary`` compares identity): a copied or unpickled layer, binarizer or
    # model keeps the same object, not a look-alike that would pass for binary.
    def __copy__(self) -> "WeightFormat":
        return self

    def __deepcopy__(self, memo) -> "WeightFormat":
        return self

    def __reduce__(self):
        return get_format, (self.name,)

    def packed_columns(self, in_features: int) -> int:
        """Bytes per packed row for ``in_features`` inputs."""
        return (in_features + self.weights_per_byte - 1) // self.weights_per_byte

    def codes(self, weight: torch.Tensor) -> torch.Tensor:
        """The hard codes of a latent float weight as int8 (no gradient): signs, or row-absmean ternary values."""
        return self._codes(weight.detach())

    def pack(self, codes: torch.Tensor) -> torch.Tensor:
        """Pack a 2-D tensor of this format's values (``{-1, +1}`` or ``{-1, 0, +1}``) into its byte layout."""
        return self._pack(codes)

    def quantize(self, weight: torch.Tensor) -> torch.Tensor:
        """Pack a latent float weight with this format's hard quantizer (:meth:`codes`, then :meth:`pack`)."""
        return self._pack(self.codes(weight))

    def unpack(self, packed: torch.Tensor, in_features: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The dense value matrix ``(out_features, in_features)`` of a packed weight, in ``dtype``."""
        return self._unpack(packed, in_features, dtype)

    def fit(self, weight: torch.Tensor, method: str = "svid", iters: int = 30):
        """The initial fit of a float weight: ``(values, g, h)`` with ``W ~ h[:, None] * values * g[None, :]``."""
        return self._fit(weight, method, iters)


BINARY = WeightFormat("binary", WEIGHTS_PER_BYTE["binary"], "1-bit", "progressive", hard_sign, pack_signs,
                      unpack_signs, _signs, _binary_fit)
TERNARY = WeightFormat("ternary", WEIGHTS_PER_BYTE["ternary"], "ternary", "progressive", hard_ternary, pack_ternary,
                       unpack_ternary, _ternary_codes, _ternary_fit)
FORMATS = {f.name: f for f in (BINARY, TERNARY)}
assert tuple(FORMATS) == WEIGHT_FORMATS


def get_format(weight_format: "str | WeightFormat", name: str = "weight_format") -> WeightFormat:
    """The :class:`WeightFormat` named ``weight_format`` (a WeightFormat is returned as it is); a ValueError naming
    ``name`` for anything else."""
    if isinstance(weight_format, WeightFormat):
        return weight_format
    return FORMATS[check_weight_format(weight_format, name)]
