"""Registration of the ``onebit`` method with transformers (idempotent: safe on re-import and module reload)."""

from __future__ import annotations

from transformers.quantizers import auto

from ..config import QUANT_METHOD, OneBitConfig
from .attention import register_attention
from .quantizer import OneBitHfQuantizer


def _same_class(a, b) -> bool:
    return a is b or (a.__module__ == b.__module__ and a.__qualname__ == b.__qualname__)


def register() -> None:
    """Make transformers resolve ``quant_method: "onebit"`` to hf_onebit's config and quantizer, and know the
    ``onebit_sdpa`` attention (:mod:`.attention`)."""
    register_attention()
    for mapping, cls, register_fn in (
        (auto.AUTO_QUANTIZATION_CONFIG_MAPPING, OneBitConfig, auto.register_quantization_config),
        (auto.AUTO_QUANTIZER_MAPPING, OneBitHfQuantizer, auto.register_quantizer),
    ):
        current = mapping.get(QUANT_METHOD)
        if current is None:
            register_fn(QUANT_METHOD)(cls)
        elif _same_class(current, cls):
            mapping[QUANT_METHOD] = cls  # a reloaded hf_onebit replaces its own earlier registration
        else:
            raise RuntimeError(
                f"transformers already has a different quantization method registered as {QUANT_METHOD!r}: "
                f"{current.__module__}.{current.__qualname__}"
            )
