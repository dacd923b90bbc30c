"""hf_onebit: 1-bit quantization for Hugging Face transformers."""
from .config import OneBitConfig
from .modules import OneBitLinear
from . import ops

__version__ = "0.1.0"
