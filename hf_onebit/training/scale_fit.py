"""Data-aware fit of a 1-bit layer's scale vectors: ``g`` and ``h`` that minimise the layer's *output* error.

A quantized layer computes ``x @ W_hat.T`` with ``W_hat = diag(h) Q diag(g)`` (``Q`` the sign or ternary codes).
SVID fits ``h g^T`` to ``|W|`` - the error on the weights. What the model needs is the error on the outputs over the
inputs the layer actually sees: with ``C = X^T X`` (the second moment of the calibration inputs, ``K x K``)

    E(g, h) = sum_n (w_n - h_n q_n * g)^T C (w_n - h_n q_n * g)

(ARB-LLM's ARB-X refines row and column scales against the same ``X^T X``). For fixed ``g`` each ``h_n`` has a closed
form; for fixed ``h`` the optimal ``g`` solves the ``K x K`` system ``(C * (Q^T diag(h^2) Q)) g = (Q * (W C))^T h``.
:func:`fit_scales` alternates the two from a start (SVID's), and every step can only lower ``E``.
"""

from __future__ import annotations

import torch

from ..formats import get_format

#: Tikhonov term added to the ``g`` system, relative to its mean diagonal (keeps near-singular ``C`` solvable).
RIDGE = 1e-6


def output_error(weight: torch.Tensor, codes: torch.Tensor, g: torch.Tensor, h: torch.Tensor,
                 cov: torch.Tensor) -> float:
    """``E(g, h)`` above: the summed squared output error over the inputs whose second moment is ``cov``."""
    d = weight.double() - h.double()[:, None] * codes.double() * g.double()[None, :]
    return float(((d @ cov.double()) * d).sum())


@torch.no_grad()
def fit_scales(weight: torch.Tensor, codes: torch.Tensor, cov: torch.Tensor, g: torch.Tensor, h: torch.Tensor,
               iters: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Alternating closed-form minimisation of the output error ``E(g, h)`` (see the module docstring).

    ``weight`` ``(N, K)`` is the float weight, ``codes`` its fixed 1-bit (or ternary) codes, ``cov`` ``(K, K)`` the
    input second moment ``X^T X`` (any positive scale), ``g`` ``(K,)`` / ``h`` ``(N,)`` the start. Returns float32
    ``(g, h)``; a row or column whose codes are all zero keeps its start value.
    """
    w, q, c = weight.double(), codes.double(), cov.double()
    g, h = g.double().clone(), h.double().clone()
    wc = w @ c  # (N, K)
    eye = torch.eye(c.shape[0], dtype=c.dtype, device=c.device)
    for _ in range(iters):
        p = q * g[None, :]  # (N, K): the rows h_n multiplies
        num = (wc * p).sum(dim=1)
        den = ((p @ c) * p).sum(dim=1)
        h = torch.where(den > 0, num / den.clamp_min(1e-300), h)
        a = c * (q.T @ (q * (h * h)[:, None]))  # (K, K)
        b = ((q * wc) * h[:, None]).sum(dim=0)
        ridge = RIDGE * a.diagonal().mean().clamp_min(1e-300)
        solved = torch.linalg.solve(a + ridge * eye, b)
        used = q.abs().sum(dim=0) > 0
        g = torch.where(used, solved, g)
    return g.float(), h.float()


@torch.no_grad()
def gptq_codes(weight: torch.Tensor, cov: torch.Tensor, g: torch.Tensor, weight_format: str = "binary",
               damp: float = 0.01, block: int = 128) -> torch.Tensor:
    """Codes chosen column by column with error feedback (GPTQ's procedure on the 1-bit or ternary grid) for the
    layer ``diag(h) Q diag(g)``; returns ``Q`` (float32 ``(N, K)``, in {-1, +1} or {-1, 0, +1}).

    In the input-scaled space ``W' = W diag(1/g)`` (inputs ``X diag(g)``, second moment ``C' = diag(g) C diag(g)``)
    each column ``j`` is rounded to the grid (binary: ``a * sign(w')``; ternary: ``c * clamp(round(w' / a), -1, 1)``
    with ``a`` the row's mean ``|w'|`` and ``c`` the mean ``|w'|`` of its entries above ``a / 2``) and its error,
    weighted by ``C'^-1``, is pushed onto the columns not rounded yet, so that later codes compensate for earlier
    ones: the output error over the calibration inputs falls well below that of rounding each weight alone (on
    SmolLM2-135M's layers, after :func:`fit_scales`, to 0.5-0.8 of it). ``damp`` adds that fraction of the mean
    diagonal to ``C'`` (GPTQ's dampening).
    """
    w = weight.double() / g.double()[None, :]
    n, k = w.shape
    c = cov.double() * g.double()[None, :] * g.double()[:, None]
    diag = c.diagonal().mean().clamp_min(1e-300)
    c = c + damp * diag * torch.eye(k, dtype=c.dtype, device=c.device)
    dead = cov.diagonal() <= 0
    c[dead, dead] = diag  # an input that never fires: any sign, no feedback
    lower = torch.linalg.cholesky(c)
    inv_lower = torch.linalg.solve_triangular(lower, torch.eye(k, dtype=c.dtype, device=c.device), upper=False)
    u = torch.linalg.cholesky(inv_lower.T @ inv_lower, upper=True).float()  # C'^-1 = U^T U
    w = w.float()
    absmean = w.abs().mean(dim=1).clamp_min(1e-30)
    ternary = get_format(weight_format).is_ternary
    if ternary:
        level = torch.where(w.abs() > absmean[:, None] / 2, w.abs(), torch.zeros_like(w))
        level = level.sum(dim=1) / (w.abs() > absmean[:, None] / 2).sum(dim=1).clamp_min(1)
    scale = level.clamp_min(1e-30) if ternary else absmean
    signs = torch.empty_like(w)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # thousands of tiny column updates: threads would only wait for each other
    try:
        for start in range(0, k, block):
            end = min(start + block, k)
            wb = w[:, start:end].clone()
            errs = torch.empty_like(wb)
            ub = u[start:end, start:end]
            for j in range(end - start):
                s = (torch.clamp(torch.round(wb[:, j] / absmean), -1, 1) if ternary
                     else torch.where(wb[:, j] >= 0, 1.0, -1.0))
                signs[:, start + j] = s
                err = (wb[:, j] - scale * s) / ub[j, j]
                wb[:, j + 1:].addr_(err, ub[j, j + 1:], alpha=-1)
                errs[:, j] = err
            torch.set_num_threads(threads)
            w[:, end:].addmm_(errs, u[start:end, end:], alpha=-1)
            torch.set_num_threads(1)
    finally:
        torch.set_num_threads(threads)
    return signs


def codes_to_latent(codes: torch.Tensor, latent: torch.Tensor, weight_format: str = "binary") -> torch.Tensor:
    """Latent weights whose hard quantizer gives ``codes``: binary keeps each weight's magnitude with the code's
    sign; ternary uses the codes times the row's mean ``|latent|`` (the absmean step maps them back exactly)."""
    if get_format(weight_format).is_ternary:
        return codes * latent.abs().mean(dim=1, keepdim=True)
    return torch.where(codes >= 0, latent.abs(), -latent.abs())
