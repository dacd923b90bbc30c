"""hf_onebit inside transformers: the quantizer behind ``from_pretrained`` / ``save_pretrained`` and what it uses.

* :mod:`~hf_onebit.integration.registration`: registers the ``"onebit"`` method (run by ``import hf_onebit``).
* :mod:`~hf_onebit.integration.quantizer`: :class:`OneBitHfQuantizer`, the ``HfQuantizer`` transformers calls.
* :mod:`~hf_onebit.integration.convert`: the module swap (``quantize_`` / ``dequantize_``; models or plain torch).
* :mod:`~hf_onebit.integration.checkpoint`: checks on a pre-quantized checkpoint before any weight is loaded.
* :mod:`~hf_onebit.integration.tying`: tied input scales (``OneBitConfig(tie_input_scales=True)``).
* :mod:`~hf_onebit.integration.offload`: accelerate disk offload of packed weights.
* :mod:`~hf_onebit.integration.runtime`: ``set_runtime`` - a loaded model's activation mode and kernel backend.
* :mod:`~hf_onebit.integration.finetune`: a packed model's float vectors trained by the stock ``Trainer``.
* :mod:`~hf_onebit.integration.compat`: the spellings that differ between supported transformers releases.
"""
