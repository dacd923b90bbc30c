"""Evaluation: perplexity on a text, bits per weight and size on disk of a (1-bit) model."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.nn as nn

from .modules import OneBitLinear


@torch.no_grad()
def perplexity(model, tokenizer, text: str, seq_len: int = 512, stride: int | None = None,
               max_tokens: int | None = None, progress: bool = False) -> float:
    """Perplexity of ``model`` on ``text`` over non-overlapping windows of ``seq_len`` tokens (or ``stride``)."""
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    if max_tokens is not None:
        ids = ids[:max_tokens]
    return perplexity_ids(model, ids, seq_len=seq_len, stride=stride, progress=progress)


@torch.no_grad()
def perplexity_ids(model, ids: torch.Tensor, seq_len: int = 512, stride: int | None = None, progress: bool = False) -> float:
    if ids.numel() < 2:
        raise ValueError(f"perplexity needs at least 2 tokens, got {ids.numel()}")
    stride = stride or seq_len
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    nll, count = 0.0, 0
    starts = list(range(0, max(ids.numel() - 1, 1), stride))
    iterator = starts
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(starts, desc="perplexity", unit="window")
    for start in iterator:
        chunk = ids[start : start + seq_len + 1]
        if chunk.numel() < 2:
            break
        inputs = chunk[:-1].unsqueeze(0).to(device)
        labels = chunk[1:].to(device)
        logits = model(input_ids=inputs).logits[0].float()
        nll += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        count += labels.numel()
    model.train(was_training)
    return math.exp(nll / count)


@dataclass
class SizeReport:
    quantized_weights: int  # weights stored packed (1-bit signs or 2-bit ternary codes)
    quantized_bits: int  # bits those layers take (packed codes with row padding + scale vectors + bias)
    other_params: int
    other_bytes: int

    @property
    def bits_per_quantized_weight(self) -> float:
        return self.quantized_bits / max(self.quantized_weights, 1)

    @property
    def total_bytes(self) -> int:
        return self.quantized_bits // 8 + self.other_bytes

    @property
    def bits_per_weight_overall(self) -> float:
        return 8 * self.total_bytes / max(self.quantized_weights + self.other_params, 1)


def size_report(model: nn.Module) -> SizeReport:
    """Storage of the packed form of ``model``: 1-bit / ternary layers (their actual packed tensors, so a ternary
    layer counts ~2 bits per weight) and everything else (tied tensors counted once)."""
    q_weights = q_bits = 0
    seen: set[int] = set()
    onebit_params: set[int] = set()
    for module in model.modules():
        if isinstance(module, OneBitLinear):
            state = module.packed_state()
            q_weights += module.in_features * module.out_features
            tensors = list(state.values()) + ([module.bias] if module.bias is not None else [])
            q_bits += sum(t.numel() * t.element_size() * 8 for t in tensors)
            onebit_params.update(id(p) for p in module.parameters())
    other_params = other_bytes = 0
    for p in model.parameters():
        if id(p) in onebit_params or p.data_ptr() in seen:
            continue
        seen.add(p.data_ptr())
        other_params += p.numel()
        other_bytes += p.numel() * p.element_size()
    return SizeReport(q_weights, q_bits, other_params, other_bytes)


def size_on_disk(path: str) -> int:
    """Bytes of the weight files (``*.safetensors``) in a checkpoint folder."""
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".safetensors"))


def format_table(headers: list[str], rows: list[list]) -> str:
    """A markdown table (used by the CLI and the benchmarks)."""
    cells = [[str(h) for h in headers]] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells[1:]]
    return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, float):
        if value != value or math.isinf(value):
            return str(value)
        if abs(value) >= 1e5 or (0 < abs(value) < 1e-3):
            return f"{value:.3g}"
        return f"{value:.4g}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)
