"""The torch modules: :class:`OneBitLinear` (:mod:`~hf_onebit.nn.linear`), packed for inference, latent for training;
:class:`FloatHead` (:mod:`~hf_onebit.nn.float_head`), the float output head with the CPU decode kernel.

It calls the kernels only through :mod:`hf_onebit.ops`."""

from .float_head import FloatHead
from .linear import OneBitLinear

__all__ = ["FloatHead", "OneBitLinear"]
