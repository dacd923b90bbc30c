"""hf_onebit and other projects' low-bit formats.

* :mod:`hf_onebit.interop.bitnet`: transformers' own BitNet (b1.58) packed checkpoints -> ternary OneBitLinear.
* :mod:`hf_onebit.interop.gguf`: hf_onebit models -> GGUF files for llama.cpp (Q1_0, TQ1_0, TQ2_0).
"""

from .bitnet import BitNetConversionError, convert_bitnet_model_, load_bitnet, unpack_bitnet_rows

__all__ = ["BitNetConversionError", "convert_bitnet_model_", "load_bitnet", "unpack_bitnet_rows"]
