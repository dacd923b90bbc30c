"""Binarizers for the latent form of :class:`~hf_onebit.nn.linear.OneBitLinear` during training.

A binarizer is what ``OneBitLinear.forward`` applies to the latent weight matrix (``module.binarizer(weight)``); the
layer then computes ``F.linear(x * scale_in, binarizer(weight)) * scale_out``. Every binarizer here has a hard-sign
limit whose function is exactly that of the packed layer after :func:`finalize_module_` folds the row scale into
``scale_out``.

Ternary layers (``weight_format="ternary"``) use the same machinery with the ternary step in place of the sign: the
hard quantizer is :func:`hf_onebit.nn.linear.hard_ternary` (``clamp(round(w / mean|w_row|), -1, 1)``) and the smooth
progressive approximation is :func:`progressive_ternary`.
"""

from __future__ import annotations

import math

import torch

from ..formats import get_format, hard_sign

_EPS = 1e-8


class Temperature:
    """The shared, mutable ``t`` of every progressive binarizer of a model (``math.inf`` = hard sign)."""

    def __init__(self, t: float = 0.0):
        self.t = float(t)

    def __repr__(self) -> str:
        return f"Temperature(t={self.t:g})"


def row_absmean(weight: torch.Tensor) -> torch.Tensor:
    """``S_a``: the mean absolute value of each row of ``weight``, shape ``(out, 1)``, never 0 (no gradient)."""
    return weight.detach().abs().mean(dim=1, keepdim=True).clamp_min(_EPS)


def least_squares_row_scale(weight: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Per row, the scale ``c`` minimising ``|w - c q|^2``: ``<w, q> / <q, q>``, shape ``(out, 1)`` (no gradient).

    For ``q = sign(w)`` it is the row absmean ``S_a``; for the ternary step it is the mean ``|w|`` over the non-zero
    codes, the level that keeps a ternary row as large as the row it replaces.
    """
    w, q = weight.detach(), q.detach()
    return ((w * q).sum(dim=1, keepdim=True) / (q * q).sum(dim=1, keepdim=True).clamp_min(_EPS)).clamp_min(_EPS)


class _ProgressiveSign(torch.autograd.Function):
    """``s * tanh(t * w / s) / tanh(t)`` with its exact derivative ``t * (1 - tanh^2) / tanh(t)`` (``s`` constant)."""

    @staticmethod
    def forward(ctx, w, s, t: float):
        y = torch.tanh(w * (t / s))
        ctx.save_for_backward(y)
        ctx.t = t
        return y * (s / math.tanh(t))

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        t = ctx.t
        return grad * ((1 - y * y) * (t / math.tanh(t))), None, None


class _ProgressiveRows(torch.autograd.Function):
    """``scale_out[:, None] * B(w) * scale_in[None, :]`` on the CPU kernels (``hf_onebit.ops.cpu.progressive``; a scale
    given as None is left out), ``B`` the progressive sign ``progressive_sign(w, t, row_absmean(w))`` or, with
    ``ternary``, the dual-scaling ternary step ``c * G(w / s, t)`` of :class:`ProgressiveBinarizer`.
    The output comes in ``out_dtype``; the row scales are held constant and the backward recomputes the tanh from
    ``w`` instead of keeping it."""

    @staticmethod
    def forward(ctx, w, scale_in, scale_out, t: float, out_dtype, ternary: bool):
        from ..ops.cpu import progressive as kernels

        scales = (_detached(scale_in), _detached(scale_out))
        if ternary:
            out, row_scales = kernels.progressive_ternary_forward(w.detach(), t, *scales, out_dtype=out_dtype)
        else:
            out, row_scales = kernels.progressive_sign_forward(w.detach(), t, out_dtype, *scales)
        ctx.save_for_backward(w, row_scales, scale_in, scale_out)
        ctx.t, ctx.ternary = t, ternary
        return out

    @staticmethod
    def backward(ctx, grad):
        from ..ops.cpu import progressive as kernels

        w, row_scales, scale_in, scale_out = ctx.saved_tensors
        backward = kernels.progressive_ternary_backward if ctx.ternary else kernels.progressive_sign_backward
        grads = backward(w.detach(), row_scales, ctx.t, grad, _detached(scale_in), _detached(scale_out))
        return (*grads, None, None, None)


def _detached(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach()


def matmul_dtype(weight: torch.Tensor) -> torch.dtype:
    """The dtype a linear layer will multiply ``weight`` in: autocast's where it is on, else the weight's own."""
    device = weight.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return weight.dtype


def progressive_sign_absmean(w: torch.Tensor, t: float, use_kernel: bool = True) -> torch.Tensor:
    """``progressive_sign(w, t, row_absmean(w))``: on the CPU kernels where they take ``w``, written in the dtype the
    matmul that follows runs in (:func:`matmul_dtype`: float32, or bfloat16 under bf16 autocast, which then does not
    cast it again), unless ``use_kernel`` is False; else on the reference path (six to eight passes over the weight
    and a kept tanh instead of one pass each way)."""
    if math.isinf(t):
        return hard_sign(w) * row_absmean(w)
    if not t > 0:
        raise ValueError(f"t: got {t}; allowed: a number > 0 or inf")
    out = _on_kernel(w, t, ternary=False) if use_kernel else None
    return out if out is not None else progressive_sign(w, t, row_absmean(w))


def _on_kernel(w: torch.Tensor, t: float, ternary: bool, scale_in: torch.Tensor | None = None,
               scale_out: torch.Tensor | None = None, dtype: torch.dtype | None = None) -> torch.Tensor | None:
    """The dual-scaling binarizer of ``w`` (``ternary``: the smooth ternary step, else the sign) on the CPU kernels,
    the scales given folded in, written in ``dtype`` (default: the matmul's, :func:`matmul_dtype`); None where the
    kernels do not take it (not CPU, ``t`` not finite and > 0, a layout or dtype they lack, no library)."""
    if not (w.is_cpu and t > 0 and math.isfinite(t)):
        return None
    from ..ops.cpu.progressive import supports

    dtype = matmul_dtype(w) if dtype is None else dtype
    if not supports(w, dtype, scale_in, scale_out):
        return None
    return _ProgressiveRows.apply(w, scale_in, scale_out, float(t), dtype, ternary)


def progressive_sign(w: torch.Tensor, t: float, row_scale: torch.Tensor | None = None) -> torch.Tensor:
    """``F(w, t) = tanh(t w) / tanh(t)`` applied to ``w / row_scale`` and scaled back (forward and exact backward).

    ``t`` near 0 gives (almost) the identity, ``t = inf`` the hard sign ``row_scale * sign(w)``.
    """
    s = row_scale if row_scale is not None else torch.ones((), dtype=w.dtype, device=w.device)
    if math.isinf(t):
        return hard_sign(w) * s
    if not t > 0:
        raise ValueError(f"t: got {t}; allowed: a number > 0 or inf")
    return _ProgressiveSign.apply(w, s, float(t))


class _ProgressiveTernary(torch.autograd.Function):
    """``s * G(w / s, t)`` with ``G(u, t) = (tanh(t (u - 1/2)) + tanh(t (u + 1/2))) / (tanh(t / 2) + tanh(3 t / 2))``
    and its exact derivative (``s`` constant)."""

    @staticmethod
    def forward(ctx, w, s, t: float):
        u = w / s
        a = torch.tanh(t * (u - 0.5))
        b = torch.tanh(t * (u + 0.5))
        norm = math.tanh(t / 2) + math.tanh(1.5 * t)
        ctx.save_for_backward(a, b)
        ctx.t, ctx.norm = t, norm
        return (a + b) * (s / norm)

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        return grad * ((2 - a * a - b * b) * (ctx.t / ctx.norm)), None, None


def progressive_ternary(w: torch.Tensor, t: float, row_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Smooth ternary step ``s * G(w / s, t)`` (forward and exact backward), ``s`` = ``row_scale`` (default 1).

    ``G(u, t)`` is ``u`` as ``t -> 0`` (the float model) and the ternary step with thresholds at ``|u| = 1/2`` as
    ``t -> inf``: with ``s`` the row absmean that is BitNet b1.58's ``clamp(round(w / s), -1, 1)``, so the limit is
    ``s * hard_ternary(w)``. ``G(1, t) = 1`` for every ``t``, like ``tanh(t) / tanh(t)`` for the sign.
    """
    from ..nn.linear import hard_ternary

    s = row_scale if row_scale is not None else torch.ones((), dtype=w.dtype, device=w.device)
    if math.isinf(t):
        return hard_ternary(w) * s if row_scale is not None else _ternary_step(w)
    if not t > 0:
        raise ValueError(f"t: got {t}; allowed: a number > 0 or inf")
    return _ProgressiveTernary.apply(w, s, float(t))


def _ternary_step(w: torch.Tensor) -> torch.Tensor:
    """``clamp(round(w), -1, 1)`` with a straight-through gradient (the ``t = inf`` limit without a row scale)."""
    return w + (w.detach().round().clamp(-1, 1) - w.detach())


def quantizer_for_format(weight_format: str):
    """The hard quantizer of a format (:attr:`hf_onebit.formats.WeightFormat.hard`): ``hard_sign`` or ``hard_ternary``."""
    return get_format(weight_format).hard


def quantizer_for(module):
    """The hard quantizer of ``module``'s format."""
    return module.format.hard


class ProgressiveBinarizer:
    """Consistent progressive binarizer (Tu et al. 2025) with optional dual-scaling compensation.

    With ``dual_scaling`` the effective weight is ``S_a * F(W / S_a, t)`` where ``S_a`` is the row's mean absolute
    latent weight, recomputed at every call; the learnable per-row ``S_l`` is the layer's ``scale_out``. Binary layers
    compute it on the CPU kernels where they apply (:func:`progressive_sign_absmean`; ``use_kernel=False`` keeps the
    reference path, e.g. to time the difference).

    Ternary layers use ``c * G(W / S_a, t)`` instead, with ``c`` the least-squares row scale of the current soft step
    (:func:`least_squares_row_scale`): ``c = S_a`` at ``t -> 0`` (the identity, as for binary) and the mean ``|w|`` of
    the non-zero codes at ``t = inf``. With the binary ``S_a`` the hard ternary rows would shrink by that ratio in every
    layer (30 layers: held-out perplexity ~1e9 before training on SmolLM2) and ``S_l`` would need hundreds of steps
    to grow it back. In float32 on the CPU the layer takes it from :meth:`scaled_weight` (the kernel, scales folded
    in); :meth:`__call__` is the PyTorch reference.
    """

    kind = "progressive"

    def __init__(self, temperature: Temperature, dual_scaling: bool = True, weight_format: str = "binary",
                 use_kernel: bool = True):
        self.temperature = temperature
        self.use_kernel = use_kernel
        self.dual_scaling = dual_scaling
        self.format = get_format(weight_format)
        self.weight_format = self.format.name
        self._fn = progressive_ternary if self.format.is_ternary else progressive_sign

    def row_scale(self, weight: torch.Tensor) -> torch.Tensor | None:
        """The row scale of the hard (``t = inf``) limit, folded into ``scale_out`` by :func:`finalize_module_`."""
        if not self.dual_scaling:
            return None
        if self.format.is_ternary:
            return least_squares_row_scale(weight, self.format.hard(weight))
        return row_absmean(weight)

    def scaled_weight(self, weight: torch.Tensor, scale_in: torch.Tensor, scale_out: torch.Tensor,
                      dtype: torch.dtype) -> torch.Tensor | None:
        """``scale_out[:, None] * self(weight) * scale_in[None, :]`` in ``dtype`` (the matmul's) from one kernel pass,
        or None where the kernels do not apply (no dual scaling, ``t = inf``, not CPU float32, or
        ``use_kernel=False``) or ``dtype`` is not float32: then the layer scales its input and output itself. Binary
        layers get the progressive sign, ternary layers the smooth ternary step with its least-squares row scale.

        Folded into a bf16 weight, the scales' gradients come from the bf16 weight gradient of the matmul (each entry
        rounded before the sums over rows and columns): trained that way SmolLM2-135M ended 1.29x further from the
        teacher (held-out test perplexity 502.0 against 388.0 for 10 minutes of distillation, Intel Xeon AMX), so
        the fold is for float32 training only."""
        if not self.use_kernel or not self.dual_scaling or dtype != torch.float32:
            return None
        return _on_kernel(weight, self.temperature.t, self.format.is_ternary, scale_in, scale_out, dtype)

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        if self.format.is_ternary and self.dual_scaling:
            out = _on_kernel(weight, self.temperature.t, ternary=True) if self.use_kernel else None
            if out is not None:
                return out
            s = row_absmean(weight)
            g = progressive_ternary(weight, self.temperature.t, s) / s  # G(W / S_a, t), exact gradient
            return g * least_squares_row_scale(weight, g)
        if self.dual_scaling:
            return progressive_sign_absmean(weight, self.temperature.t, self.use_kernel)
        return self._fn(weight, self.temperature.t, None)

    def __repr__(self) -> str:
        return (f"ProgressiveBinarizer({self.temperature!r}, dual_scaling={self.dual_scaling}, "
                f"weight_format={self.weight_format!r})")


class BinaryAwareInitBinarizer:
    """Stage 1 of the progressive recipe: dense weights frozen, learn the per-input scale ``S_t`` (= ``scale_in``).

    The layer computes ``(x * S_t) @ B(W / S_t).T`` with ``B(u) = S_a(u) * sign(u)`` (row absmean times sign, tanh
    estimator for the sign's gradient): the 1-bit function that folding ``W_latent = W / S_t`` will produce.
    """

    kind = "binary_aware_init"

    def __init__(self, module):
        self._module = module
        self._quantize = quantizer_for(module)

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        u = weight.detach() / self._module.scale_in.to(weight.dtype)
        s = u.abs().mean(dim=1, keepdim=True).clamp_min(_EPS)
        q = self._quantize(u / s)
        if self._module.format.is_ternary:
            # the least-squares level of the codes (mean |u| over the non-zero ones), differentiable in S_t like s
            qd = q.detach()
            s = (u * qd).sum(dim=1, keepdim=True) / (qd * qd).sum(dim=1, keepdim=True).clamp_min(_EPS)
        return q * s

    def __repr__(self) -> str:
        return "BinaryAwareInitBinarizer()"


class FrozenCodes:
    """The last stage of a run that freezes the codes: the layer's hard codes (``sign(W)``, or the ternary values),
    computed once in the matmul's dtype and returned on every call, with no gradient to the latent weight.

    Late in a progressive run the codes hardly change (a fraction of ~1e-4 of them per log interval flips in its last
    quarter on SmolLM2), so the rest can train the scale vectors, norms and embeddings alone: no binarizer pass, no
    weight-gradient matmul and no optimizer update of the latent weights per step. :func:`freeze_codes_` installs it
    after :func:`finalize_module_` (row scale folded into ``scale_out``), so the layer computes exactly what its
    packed form will. ``row_scale`` is absent on purpose: :func:`finalize_module_` then folds nothing more.
    """

    kind = "frozen"

    def __init__(self, codes: torch.Tensor):
        self.codes = codes.detach()

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        if weight.shape != self.codes.shape:
            raise ValueError(f"FrozenCodes: the weight has shape {tuple(weight.shape)}, the frozen codes "
                             f"{tuple(self.codes.shape)}; allowed: the layer the codes were frozen from")
        return self.codes

    def __repr__(self) -> str:
        return f"FrozenCodes({tuple(self.codes.shape)}, dtype={self.codes.dtype})"


@torch.no_grad()
def freeze_codes_(module, dtype: torch.dtype, fold: bool = True) -> None:
    """Freeze a latent layer's codes for the rest of a run: fold the row scale into ``scale_out`` (``fold``; False
    when resuming from a checkpoint saved after the fold), stop the latent weight's gradient and install
    :class:`FrozenCodes` in ``dtype`` (the dtype the layer's matmul runs in: bf16 under bf16 autocast)."""
    if fold:
        finalize_module_(module)
    module.weight.requires_grad_(False)
    module.weight.grad = None
    module.binarizer = FrozenCodes(module.format.hard(module.weight).to(dtype))


@torch.no_grad()
def finalize_module_(module) -> None:
    """Fold the binarizer's row scale into ``scale_out`` and switch to the hard sign (the packed layer's function)."""
    binarizer = module.binarizer
    if isinstance(binarizer, BinaryAwareInitBinarizer):
        fold_binary_aware_init_(module)
        binarizer = module.binarizer
    row_scale = getattr(binarizer, "row_scale", None)
    if callable(row_scale):
        s = row_scale(module.weight)
        if s is not None:
            module.scale_out.mul_(s.squeeze(1).to(module.scale_out.dtype))
        elif module.format.is_ternary:
            # Without a row scale the t = inf limit thresholds w itself at 1/2; store exactly those values (which
            # hard_ternary maps to themselves) so the hard quantizer of the packed layer computes the same function.
            module.weight.copy_(_ternary_step(module.weight))
    module.binarizer = quantizer_for(module)


@torch.no_grad()
def fold_binary_aware_init_(module) -> None:
    """``W_latent = W / S_t``; ``S_t`` stays as ``scale_in``; the hard-sign function is unchanged."""
    module.weight.div_(module.scale_in.to(module.weight.dtype))
    module.binarizer = ProgressiveBinarizer(Temperature(math.inf), dual_scaling=True,
                                            weight_format=module.weight_format)
