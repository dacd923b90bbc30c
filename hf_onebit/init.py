"""Initialising 1-bit layers from pretrained weights.

SVID (sign-value-independent decomposition, OneBit): ``W ~= sign(W) * (a b^T)`` where ``a b^T`` is the best rank-1
approximation of ``|W|``. ``a`` (one value per output) becomes ``scale_out`` (h), ``b`` (one per input) becomes
``scale_in`` (g).

For a non-negative matrix the leading singular vectors can be chosen non-negative (Perron-Frobenius), so the best
rank-1 fit in Frobenius norm is also the best non-negative one: ``"svid"`` finds it by power iteration, ``"nmf"`` by
multiplicative updates (OneBit's preferred solver). Both return ``a, b >= 0``.
"""

from __future__ import annotations

import torch


def svid_rank1(weight: torch.Tensor, method: str = "svid", iters: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-1 non-negative fit ``|W| ~= a b^T``; returns ``(a, b)`` in float32 with ``a: (out,)``, ``b: (in,)``."""
    if weight.dim() != 2:
        raise ValueError(f"svid_rank1 expects a 2-D weight, got shape {tuple(weight.shape)}")
    if method not in ("svid", "nmf"):
        raise ValueError(f"method: {method!r} is not supported; allowed: ('svid', 'nmf')")
    A = weight.detach().float().abs()
    if method == "svid":
        a, b = _power_iteration(A, iters)
    else:
        a, b = _nmf_rank1(A, iters)
    return a, b


def _power_iteration(A: torch.Tensor, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    v = A.mean(dim=0)
    v = v / v.norm().clamp_min(1e-30)
    u = A @ v
    for _ in range(iters):
        u = A @ v
        u = u / u.norm().clamp_min(1e-30)
        v = A.T @ u
        v = v / v.norm().clamp_min(1e-30)
    sigma = u @ (A @ v)
    root = sigma.clamp_min(0).sqrt()
    return (u * root).clamp_min(0), (v * root).clamp_min(0)


def _nmf_rank1(A: torch.Tensor, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    eps = 1e-12
    a = A.mean(dim=1).sqrt() + eps
    b = A.mean(dim=0).sqrt() + eps
    for _ in range(iters):
        a = a * (A @ b) / (a * (b @ b) + eps)
        b = b * (A.T @ a) / (b * (a @ a) + eps)
    # Balance the two factors (the product is what matters) so neither under- nor overflows a 16-bit dtype.
    scale = (a.norm() / b.norm().clamp_min(1e-30)).sqrt()
    return a / scale, b * scale
