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


# ---------------------------------------------------------------------------------------------- ternary (BitNet b1.58)
#: Smallest row scale of the absmean ternarizer: a row whose mean |w| is below it (an all-zero row) maps to zeros.
TERNARY_EPS = 1e-8
#: Alternating least-squares refinements of ``(g, h)`` after the rank-1 start (each step can only lower the error).
TERNARY_REFINE_STEPS = 3


def absmean_ternary(weight: torch.Tensor) -> torch.Tensor:
    """BitNet b1.58's absmean ternarization, per output row: ``T = clamp(round(W / s), -1, 1)``, ``s = mean|W_row|``.

    Returns float32 values in {-1, 0, +1} (no gradient). BitNet b1.58 uses one ``gamma = mean|W|`` for the whole
    tensor; a per-row scale is at least as good here because every row already carries its own float scale ``h``:
    the threshold ``s / 2`` then adapts to each output channel's magnitude instead of zeroing whole rows of a small
    channel (or saturating a large one), and nothing is stored for it. This is the one definition shared by
    :func:`hf_onebit.formats.hard_ternary` (the latent forward), ``pack_`` and :func:`ternary_init`.
    """
    w = weight.detach().float()
    s = w.abs().mean(dim=-1, keepdim=True).clamp_min(TERNARY_EPS)
    return torch.clamp(torch.round(w / s), -1, 1)


def _row_lsq(weight: torch.Tensor, values: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Per row ``n``: the ``h_n`` minimising ``||W_n - h_n * values_n * g||`` (0 for a row of zeros)."""
    p = values * g[None, :]
    den = (p * p).sum(dim=1)
    return torch.where(den > 0, (weight * p).sum(dim=1) / den.clamp_min(1e-30), torch.zeros_like(den))


def ternary_init(weight: torch.Tensor, method: str = "svid", iters: int = 30,
                 refine_steps: int = TERNARY_REFINE_STEPS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fit ``W ~= h[:, None] * T * g[None, :]`` with ternary ``T``; returns ``(T, h, g)`` in float32.

    1. ``T`` = :func:`absmean_ternary` of ``W`` (fixed: the latent form's hard ternarizer reproduces it from ``W``).
    2. ``g`` (inputs) from the rank-1 fit of ``|W|`` (:func:`svid_rank1`, ``method`` / ``iters``).
    3. ``h`` (outputs) per row by least squares given ``T`` and ``g`` (closed form), then ``refine_steps``
       alternations of the same closed form for ``g`` (per column, given ``h``) and ``h``. Every step is an exact
       minimiser of the Frobenius error, so the fit never gets worse than the rank-1 start.

    Finally ``g`` and ``h`` are rescaled to equal norms (the product is unchanged) so neither under- nor overflows a
    16-bit storage dtype.
    """
    if weight.dim() != 2:
        raise ValueError(f"ternary_init expects a 2-D weight, got shape {tuple(weight.shape)}")
    w = weight.detach().float()
    values = absmean_ternary(w)
    _, g = svid_rank1(w, method=method, iters=iters)
    h = _row_lsq(w, values, g)
    for _ in range(refine_steps):
        g_new = _row_lsq(w.T, values.T, h)
        g = torch.where(values.abs().sum(dim=0) > 0, g_new, g)  # an all-zero column keeps its rank-1 value
        h = _row_lsq(w, values, g)
    scale = (h.norm() / g.norm().clamp_min(1e-30)).sqrt().clamp_min(1e-30)
    return values, h / scale, g * scale
