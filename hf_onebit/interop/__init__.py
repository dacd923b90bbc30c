"""hf_onebit and the rest of the ecosystem: PEFT adapters, the Hub, other projects' low-bit formats.

* :mod:`hf_onebit.interop.peft`: LoRA adapters on 1-bit layers (``get_peft_model``, ``load_adapter``).
* :mod:`hf_onebit.interop.hub`: model cards and Hub uploads (``save_pretrained``, ``push_to_hub``).
* :mod:`hf_onebit.interop.bitnet`: transformers' own BitNet (b1.58) packed checkpoints -> ternary OneBitLinear.
* :mod:`hf_onebit.interop.gguf`: hf_onebit models -> GGUF files for llama.cpp (Q1_0, TQ1_0, TQ2_0).
"""

from .bitnet import BitNetConversionError, convert_bitnet_model_, load_bitnet, unpack_bitnet_rows

__all__ = ["BitNetConversionError", "convert_bitnet_model_", "load_bitnet", "unpack_bitnet_rows"]
