"""Reading other projects' low-bit checkpoints into hf_onebit layers.

* :mod:`hf_onebit.interop.bitnet`: transformers' own BitNet (b1.58) packed checkpoints -> ternary OneBitLinear.
"""

from .bitnet import BitNetConversionError, convert_bitnet_model_, load_bitnet, unpack_bitnet_rows

__all__ = ["BitNetConversionError", "convert_bitnet_model_", "load_bitnet", "unpack_bitnet_rows"]
