"""Optimizer and gradient clipping for 1-bit distillation (BitNet practice, every default changeable).

* Three parameter groups: the latent weight matrices, the float scale vectors (``scale_in``, ``scale_out``, norms,
  biases) and the embedding matrices, each with its own learning rate and weight decay. Pass the result to the
  Trainer with ``optimizers=(opt, None)`` (the Trainer then builds its warm-up + cosine schedule over every group)
  or use :class:`~hf_onebit.training.trainer.OneBitDistillationTrainer`, whose ``create_optimizer`` calls it.
* :class:`AdaptiveGradClipper`: clip at ``multiplier`` times a running EMA of the gradient norm, starting at
  ``initial`` (small) before any norm has been seen; spikes are clipped and do not inflate the EMA.
"""

from __future__ import annotations

import math

import torch

from ..nn.linear import OneBitLinear

GROUP_KEY = "hf_onebit_group"
#: Default learning rate of the latent weights per recipe (``--lr``); the scale vectors get ``SCALE_LR_RATIO`` times it.
#: progressive: 2e-3 with the hidden-state weight 30 (validation split, docs/benchmarks-quality-zen4.md; 5e-4 was 1.30x
#: worse).
DEFAULT_LR = {"progressive": 2e-3, "onebit": 3e-4, "bitnet": 3e-4}
SCALE_LR_RATIO = 3.3
#: Adam's betas of :func:`onebit_optimizer`. The second moment averages over ~20 steps instead of OneBit's ~50 (0.98):
#: at 560 steps of 2 x 64 tokens (progressive recipe, validation split, AMD EPYC Zen 4) 0.95 ended 1.038x and 1.032x
#: closer to the teacher than 0.98 on two seeds, every domain closer; the first moment over ~5 steps instead of ~10
#: (0.8, not the usual 0.9) ended 1.023x and 1.033x closer on two seeds there (docs/benchmarks-quality-zen4.md).
DEFAULT_BETAS = (0.8, 0.95)


def onebit_param_groups(model, lr: float = 2e-4, scale_lr: float | None = None, weight_decay: float = 0.01,
                        scale_weight_decay: float = 0.0, embedding_lr: float | None = None) -> list[dict]:
    """Parameter groups ``[latent weights, scale vectors, embeddings]`` of the trainable parameters of ``model``.

    ``scale_lr`` defaults to ``SCALE_LR_RATIO * lr``. Frozen parameters (``requires_grad=False``) are left out. The
    input and output embedding matrices (one matrix when tied) form a third group ``embeddings`` with
    ``embedding_lr``, by default the latent weights' ``lr`` (progressive recipe, validation split: 1.10x closer to the
    teacher than training them at ``scale_lr``, docs/benchmarks-quality-zen4.md), and ``scale_weight_decay``.
    """
    for name, value in (("lr", lr), ("weight_decay", weight_decay), ("scale_weight_decay", scale_weight_decay)):
        if not isinstance(value, (int, float)) or value < 0 or (name == "lr" and value == 0):
            raise ValueError(f"{name}: got {value!r}; allowed: a number {'> 0' if name == 'lr' else '>= 0'}")
    embedding_lr = embedding_learning_rate(lr, embedding_lr)
    scale_lr = SCALE_LR_RATIO * lr if scale_lr is None else scale_lr
    latent_ids = {id(m.weight) for m in model.modules() if isinstance(m, OneBitLinear) and m.is_latent}
    embedding_ids = set()
    for get in ("get_input_embeddings", "get_output_embeddings"):
        module = getattr(model, get, lambda: None)()
        if module is not None and getattr(module, "weight", None) is not None:
            embedding_ids.add(id(module.weight))
    weights, scales, embeddings = [], [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (weights if id(p) in latent_ids else embeddings if id(p) in embedding_ids else scales).append(p)
    if not weights:
        raise ValueError("the model has no trainable latent OneBitLinear weight (load it with OneBitConfig(training=True))")
    groups = [{"params": weights, "lr": lr, "weight_decay": weight_decay, GROUP_KEY: "latent_weights"}]
    if scales:
        groups.append({"params": scales, "lr": scale_lr, "weight_decay": scale_weight_decay, GROUP_KEY: "scales"})
    if embeddings:
        groups.append({"params": embeddings, "lr": embedding_lr, "weight_decay": scale_weight_decay,
                       GROUP_KEY: "embeddings"})
    return groups


def embedding_learning_rate(lr: float, embedding_lr: float | None = None) -> float:
    """The embedding group's learning rate: ``embedding_lr``, or the latent weights' ``lr`` when it is None."""
    if embedding_lr is None:
        return lr
    if isinstance(embedding_lr, bool) or not isinstance(embedding_lr, (int, float)) or not embedding_lr > 0:
        raise ValueError(f"embedding_lr: got {embedding_lr!r}; allowed: None or a number > 0")
    return embedding_lr


def onebit_optimizer(model, lr: float = 2e-4, scale_lr: float | None = None, weight_decay: float = 0.01,
                     scale_weight_decay: float = 0.0, betas=DEFAULT_BETAS, eps: float = 1e-8,
                     embedding_lr: float | None = None) -> torch.optim.AdamW:
    """AdamW over :func:`onebit_param_groups` (betas :data:`DEFAULT_BETAS`; the fused kernel where available)."""
    groups = onebit_param_groups(model, lr, scale_lr, weight_decay, scale_weight_decay, embedding_lr)
    try:
        return torch.optim.AdamW(groups, betas=betas, eps=eps, fused=True)
    except (RuntimeError, TypeError, ValueError):  # a device or dtype without the fused kernel
        return torch.optim.AdamW(groups, betas=betas, eps=eps)


class AdaptiveGradClipper:
    """Clip gradients at ``multiplier * EMA(norm)``; ``initial`` before the first norm is known."""

    def __init__(self, multiplier: float = 2.0, initial: float = 1.0, decay: float = 0.9):
        if not multiplier > 1:
            raise ValueError(f"clip multiplier: got {multiplier!r}; allowed: a number > 1")
        if not initial > 0:
            raise ValueError(f"clip initial: got {initial!r}; allowed: a number > 0")
        if not 0 <= decay < 1:
            raise ValueError(f"clip decay: got {decay!r}; allowed: 0 <= decay < 1")
        self.multiplier, self.initial, self.decay = multiplier, initial, decay
        self.ema: float | None = None
        self.last_norm = float("nan")
        self.clipped_steps = 0

    @property
    def threshold(self) -> float:
        return self.initial if self.ema is None else self.multiplier * self.ema

    @torch.no_grad()
    def clip_(self, parameters) -> float:
        """Clip the gradients in place; returns the norm before clipping."""
        params = [p for p in parameters if p.grad is not None]
        if not params:
            return 0.0
        threshold = self.threshold
        total = torch.nn.utils.get_total_norm([p.grad for p in params])
        norm = float(total)
        if not norm <= threshold:  # scale only when needed (a pass over every gradient); NaN / inf as torch does
            torch.nn.utils.clip_grads_with_norm_(params, threshold, total)
        if not math.isfinite(norm):
            return norm
        if norm > threshold:
            self.clipped_steps += 1
        seen = min(norm, threshold) if self.ema is not None else norm
        self.ema = seen if self.ema is None else self.decay * self.ema + (1 - self.decay) * seen
        self.last_norm = norm
        return norm

    def state_dict(self) -> dict:
        return {"ema": self.ema, "clipped_steps": self.clipped_steps}

    def load_state_dict(self, state: dict) -> None:
        self.ema = state.get("ema")
        self.clipped_steps = int(state.get("clipped_steps", 0))


def learning_rates(recipe: str, lr: float | None, scale_lr: float | None) -> tuple[float, float]:
    """``(lr, scale_lr)``: the given values, else the recipe's default and ``SCALE_LR_RATIO`` times the latent lr.

    The progressive default was chosen on the validation split (:data:`DEFAULT_LR`; docs/benchmarks-quality-zen4.md:
    5e-4, 1e-3, 2e-3 and 3e-3 at 560 steps of 2 x 64 tokens, scales 3.3x). The other recipes keep 3e-4 (not re-tuned).
    """
    for name, value in (("--lr", lr), ("--scale-lr", scale_lr)):
        if value is not None and not value > 0:
            raise ValueError(f"{name}: got {value}; allowed: a number > 0")
    lr = DEFAULT_LR[recipe] if lr is None else lr
    return lr, SCALE_LR_RATIO * lr if scale_lr is None else scale_lr
