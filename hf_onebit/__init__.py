"""hf_onebit: 1-bit quantization for Hugging Face transformers.

``import hf_onebit`` registers the ``"onebit"`` quantization method with transformers, so that
``from_pretrained(name, quantization_config=OneBitConfig())`` quantizes a model and ``from_pretrained(path)`` reloads a
saved 1-bit checkpoint. Without this import transformers does not know ``"onebit"`` checkpoints.
:func:`save_pretrained` / :func:`push_to_hub` (``hf_onebit.save_pretrained(model, folder)``) save with a model card.
"""

from . import ops
from .config import OneBitConfig
from .integration.convert import dequantize_, quantize_
from .integration.finetune import prepare_for_training, restore_storage_dtypes
from .integration.quantizer import OneBitHfQuantizer
from .integration.registration import register
from .integration.runtime import set_runtime
from .interop.hub import push_to_hub, save_pretrained
from .nn import OneBitLinear

__version__ = "0.1.0"

register()

__all__ = ["OneBitConfig", "OneBitLinear", "OneBitHfQuantizer", "quantize_", "dequantize_", "register", "ops",
           "prepare_for_training", "restore_storage_dtypes", "save_pretrained", "push_to_hub", "set_runtime"]
