"""The few places where supported transformers releases spell the same thing differently.

transformers 5.24 renamed a model's key/value cache argument and output (``past_key_values`` -> ``cache``) and the
Trainer's ``gradient_checkpointing`` -> ``activation_checkpointing``; the old names still work there but warn and
go away (5.40 / v6). hf_onebit supports the range in ``pyproject.toml`` and asks each model or class which name it
has, so the same code runs warning-free at both ends.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect


@functools.lru_cache(maxsize=None)
def _forward_parameters(model_class) -> frozenset:
    return frozenset(inspect.signature(model_class.forward).parameters)


def cache_kwargs(model, cache) -> dict:
    """``{name: cache}`` with the name ``model.forward`` takes for its key/value cache (``cache`` or
    ``past_key_values``)."""
    name = "cache" if "cache" in _forward_parameters(type(model)) else "past_key_values"
    return {name: cache}


def output_cache(output):
    """The key/value cache of a model output (``output.cache`` or ``output.past_key_values``)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


def checkpointing_kwargs(enabled: bool = True) -> dict:
    """``TrainingArguments`` keyword for activation (gradient) checkpointing under the installed transformers."""
    from transformers import TrainingArguments

    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    return {"activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing": enabled}


def is_checkpointing(model) -> bool:
    """Whether activation (gradient) checkpointing is switched on for ``model`` under the installed transformers."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if hasattr(type(model), name):
            return bool(getattr(model, name))
    raise AttributeError(f"{type(model).__name__} has no activation checkpointing flag")
