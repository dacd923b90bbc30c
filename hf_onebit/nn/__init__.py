"""The torch module: :class:`OneBitLinear` (:mod:`~hf_onebit.nn.linear`), packed for inference, latent for training.

It calls the kernels only through :mod:`hf_onebit.ops`."""

from .linear import OneBitLinear

__all__ = ["OneBitLinear"]
