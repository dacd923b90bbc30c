"""Shapes that a transformers model config implies but does not always spell out."""

from __future__ import annotations


def attention_head_dim(config) -> int:
    """Width of one attention head: ``config.head_dim`` where the config has it, else hidden size / attention heads."""
    value = getattr(config, "head_dim", None)
    return int(value) if value else config.hidden_size // config.num_attention_heads
