"""Triton (CUDA) backend for ``binary_linear`` and ``ternary_linear``: GEMV for decode, ``tl.dot`` for medium M,
dequant + cuBLAS for prefill.

Registered for ``cuda`` tensors when the ``triton`` package is installed (``pip install hf_onebit[triton]``); without
it nothing is registered and CUDA calls take the reference path. Both activation precisions run here (``act_bits``
0 and 8). Design notes: docs/kernels-triton.md.
"""

from __future__ import annotations

import warnings
from importlib.util import find_spec

import torch

from .. import register_kernel
from ..packed import PackedWeight

_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
_usable: bool | None = None


def _triton_usable() -> bool:
    """Import the kernels once; a broken Triton install warns once and leaves CUDA calls on the reference path."""
    global _usable
    if _usable is None:
        try:
            from . import launch  # noqa: F401
        except Exception as err:  # pragma: no cover - depends on the installed Triton
            warnings.warn(f"hf_onebit: the Triton backend could not be loaded ({err!r}); using the reference path")
            _usable = False
        else:
            _usable = True
    return _usable


def _supports(x: torch.Tensor, data: torch.Tensor, act_bits: int) -> bool:
    return (
        act_bits in (0, 8)
        and x.dtype in _DTYPES
        and data.dtype == torch.uint8
        and data.device == x.device
        and _triton_usable()
    )


def _triton_linear(x: torch.Tensor, packed: PackedWeight, act_bits: int) -> torch.Tensor:
    from .launch import packed_linear_triton

    return packed_linear_triton(x, packed.data, packed.scale_in, packed.scale_out, packed.bias, packed.in_features,
                                act_bits, weight_format=packed.weight_format)


def _prepare(packed: PackedWeight, act_bits: int, dtype: torch.dtype) -> bool:
    """:func:`hf_onebit.ops.prepare`: the repacked words the GEMV and ``tl.dot`` paths read (repack.py)."""
    from .repack import weight_words

    weight_words(packed.data, packed.in_features, packed.weight_format)
    return True


if find_spec("triton") is not None:
    for _weight_format in ("binary", "ternary"):
        register_kernel("triton", device_type="cuda", supports=_supports, priority=10, weight_format=_weight_format,
                        prepare=_prepare)(_triton_linear)
