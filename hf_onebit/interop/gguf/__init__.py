"""hf_onebit models into llama.cpp: GGUF files with 1-bit (Q1_0) and ternary (TQ1_0, TQ2_0) tensors.

* :mod:`.blocks`: the block types' bytes (encode, and decode as their specification)
* :mod:`.fold`: a LLaMA-family model as llama.cpp's tensors (``g`` folded, widths padded)
* :mod:`.export`: the GGUF file (metadata, tokenizer, tensors): :func:`export_gguf`
"""

from .export import ExportSummary, export_gguf
from .fold import ExportError

__all__ = ["ExportError", "ExportSummary", "export_gguf"]
