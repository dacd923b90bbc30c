"""The weight formats and their bits: what a 1-bit or ternary weight is, and how it is stored.

* :mod:`~hf_onebit.formats.weight_format`: :class:`WeightFormat`, one object per format (binary, ternary) holding
  everything that differs between them (pack/unpack, the hard quantizer and its straight-through form, the init fit).
* :mod:`~hf_onebit.formats.packing`: the on-disk byte layouts (sign bits, 2-bit codes) and their version.
* :mod:`~hf_onebit.formats.init`: fitting the scale vectors to a pretrained weight (SVID, absmean ternary codes).
"""

from .weight_format import (BINARY, FORMATS, TERNARY, SignWithTanhGrad, TernaryWithSTE, WeightFormat, get_format,
                            hard_sign, hard_ternary)

__all__ = ["BINARY", "FORMATS", "TERNARY", "SignWithTanhGrad", "TernaryWithSTE", "WeightFormat", "get_format",
           "hard_sign", "hard_ternary"]
