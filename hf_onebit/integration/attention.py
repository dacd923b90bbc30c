"""``attn_implementation="onebit_sdpa"``: transformers' ``sdpa`` attention with hf_onebit's CPU decode kernel.

At one query position on a CPU (every token of ``generate`` after the prompt) torch's fused attention costs about as
much per layer as one of the layer's packed linears (:mod:`hf_onebit.ops.cpu.attention`). ``onebit_sdpa`` sends
exactly those calls to the C kernel - CPU tensors, one query position, bf16 or float32, no gradient, a boolean or no
mask, none of ``softcap``, attention sinks (``s_aux``), ``position_bias`` or ``output_attentions`` - and every other
call to transformers' own ``sdpa`` function with the same arguments: prefill, training, GPUs and ``torch.compile``
run what ``sdpa`` runs. Masks are built as for ``sdpa``.

:func:`register_attention` (run by ``import hf_onebit``) adds the name to transformers' ``AttentionInterface`` and
``AttentionMaskInterface``; :func:`use_decode_attention` switches a model that runs ``sdpa`` to it and is called
wherever hf_onebit makes or loads a 1-bit model (as :func:`~hf_onebit.integration.head.use_float_head`). Switch back
with ``model.set_attn_implementation("sdpa")``, or keep the name and set ``HF_ONEBIT_DECODE_ATTENTION=0``. The name
contains ``sdpa``, so transformers checks for it what it checks for ``sdpa`` (the model must support it).
"""

from __future__ import annotations

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import AttentionInterface

from ..ops.cpu.attention import decode_attention

#: The ``attn_implementation`` name.
ATTENTION_NAME = "onebit_sdpa"
#: Keyword arguments that change what attention computes, which the kernel does not take.
_UNSERVED = ("softcap", "s_aux", "sinks", "position_bias", "output_attentions")


def onebit_sdpa_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                                  is_causal=None, **kwargs):
    """transformers' attention-function signature; returns ``(output (batch, queries, heads, dim), None)``."""
    if (query.shape[2] == 1 and not dropout and not any(kwargs.get(name) is not None and kwargs.get(name) is not False
                                                        for name in _UNSERVED)
            and not torch.compiler.is_compiling()):
        out = decode_attention(query, key, value, attention_mask, scaling)
        if out is not None:
            return out, None
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  is_causal=is_causal, **kwargs)


def register_attention() -> None:
    """Make ``attn_implementation="onebit_sdpa"`` known to transformers (idempotent)."""
    AttentionInterface.register(ATTENTION_NAME, onebit_sdpa_attention_forward)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


def use_decode_attention(model: torch.nn.Module) -> bool:
    """Switch ``model`` from ``sdpa`` to ``onebit_sdpa``; True when it did (False: the model runs another
    implementation, or has no ``set_attn_implementation``)."""
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa" or not hasattr(model, "set_attn_implementation"):
        return False
    model.set_attn_implementation(ATTENTION_NAME)
    return True
