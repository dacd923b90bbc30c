"""Evaluation: perplexity on a text, bits per weight and size on disk of a (1-bit) model."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..nn.linear import OneBitLinear


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
    """Perplexity of ``model`` on the 1-D token stream ``ids`` over windows of ``seq_len`` tokens starting every
    ``stride`` (default ``seq_len``) tokens; each window also predicts the first token after it."""
    if ids.numel() < 2:
        raise ValueError(f"perplexity needs at least 2 tokens, got {ids.numel()}")
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len: got {seq_len!r}; allowed: an integer >= 1")
    stride = stride or seq_len
    starts = range(0, max(ids.numel() - 1, 1), stride)
    chunks = [ids[start: start + seq_len + 1] for start in starts]
    chunks = [c for c in chunks if c.numel() >= 2]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(chunks), desc="perplexity", unit="window")
    nll = count = 0
    for chunk in chunks:
        part, n = window_nll(model, chunk.unsqueeze(0))
        nll, count = nll + part, count + n
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return math.exp(nll / count)


@torch.no_grad()
def window_nll(model, windows: torch.Tensor, on_window=None) -> tuple[float, int]:
    """``(sum of next-token losses, predicted tokens)`` of ``model`` over the rows of ``windows`` (``(n, len)`` ids;
    each row predicts its own tokens 2..len). ``on_window(1)`` is called after each row (a progress bar's update)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    nll, count = 0.0, 0
    try:
        for row in windows:
            row = row.to(device)
            logits = model(input_ids=row[:-1].unsqueeze(0)).logits[0].float()
            nll += nn.functional.cross_entropy(logits, row[1:], reduction="sum").item()
            count += row.numel() - 1
            if on_window is not None:
                on_window(1)
    finally:
        model.train(was_training)
    return nll, count


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
