"""Tied input scales: the ``g`` vectors that llama.cpp's graph can hold, kept equal (``OneBitConfig(tie_input_scales=True)``).

Layers that read the same input can share one ``g`` - and then a runtime without per-input scales (llama.cpp: its
1-bit and ternary types have one scale per block of a row) can fold it into the operation before them. In a LLaMA-type
decoder layer the groups are:

* ``q_proj``, ``k_proj``, ``v_proj`` (they read the attention RMSNorm's output);
* ``gate_proj``, ``up_proj`` (the MLP RMSNorm's output);
* inside ``o_proj``: the inputs of the query heads that share one key/value head (so that ``g`` folds into that
  head's ``v_proj`` rows).

(``down_proj``'s ``g`` folds into ``up_proj``'s ``h`` whatever its values: it needs no tie.)

:func:`tie_input_scales_` makes each group's ``g`` equal - the geometric mean of the group, each row's ``h`` re-fitted
to keep the layer's weight as close as it can (:func:`refit_rows`) - when a model is quantized;
:func:`keep_input_scales_tied` keeps them equal through training: after every optimizer step, each group's members
are set to their mean. :class:`~hf_onebit.training.callback.OneBitDistillationCallback` calls it for a tied model.
The GGUF exporter (:mod:`hf_onebit.interop.gguf.fold`) folds with the same :func:`shared_scale` and :func:`refit_rows`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..nn.linear import OneBitLinear

ATTN_INPUTS = ("q_proj", "k_proj", "v_proj")
MLP_INPUTS = ("gate_proj", "up_proj")


@dataclass(frozen=True)
class ScaleGroup:
    """Input scales that must stay equal: the whole ``g`` of each of ``layers``, or - ``heads_per_group > 1``, one
    layer - the slices of its ``g`` seen as ``(kv_heads, heads_per_group, head_dim)`` along the middle axis."""

    name: str
    layers: tuple
    heads_per_group: int = 1
    head_dim: int = 0

    def vectors(self) -> list[torch.Tensor]:
        """The members: views sharing memory with each ``scale_in``."""
        if self.heads_per_group == 1:
            return [m.scale_in.data for m in self.layers]
        g = self.layers[0].scale_in.data
        return list(g.view(-1, self.heads_per_group, self.head_dim).unbind(1))

    def expand(self, shared: torch.Tensor) -> torch.Tensor:
        """A member-shaped ``shared`` as a whole ``g`` of each layer."""
        if self.heads_per_group == 1:
            return shared
        return shared.unsqueeze(1).expand(-1, self.heads_per_group, -1).reshape(-1)


def scale_groups(model: nn.Module) -> list[ScaleGroup]:
    """The groups of every LLaMA-type decoder layer of ``model`` (modules with ``self_attn`` and ``mlp`` holding
    OneBitLinear ``q/k/v/o_proj``, ``gate/up_proj``)."""
    groups = []
    for name, block in model.named_modules():
        attn, mlp = getattr(block, "self_attn", None), getattr(block, "mlp", None)
        if attn is None or mlp is None:
            continue
        layers = [getattr(attn, n, None) for n in ATTN_INPUTS]
        if all(isinstance(m, OneBitLinear) for m in layers):
            groups.append(ScaleGroup(f"{name}.self_attn.q/k/v_proj", tuple(layers)))
        o_proj, per_kv = getattr(attn, "o_proj", None), getattr(attn, "num_key_value_groups", 1)
        if isinstance(o_proj, OneBitLinear) and per_kv > 1:
            groups.append(ScaleGroup(f"{name}.self_attn.o_proj", (o_proj,), per_kv, attn.head_dim))
        layers = [getattr(mlp, n, None) for n in MLP_INPUTS]
        if all(isinstance(m, OneBitLinear) for m in layers):
            groups.append(ScaleGroup(f"{name}.mlp.gate/up_proj", tuple(layers)))
    return groups


def shared_scale(gs: list[torch.Tensor]) -> tuple[torch.Tensor, bool]:
    """One ``g`` for vectors that must be equal: theirs when they already are (``True``: exact), else the
    geometric mean of their magnitudes (``False``)."""
    if all(torch.equal(gs[0], g) for g in gs[1:]):
        return gs[0], True
    return torch.exp(torch.stack([g.float().abs().clamp_min(1e-12).log() for g in gs]).mean(0)), False


def refit_rows(values: torch.Tensor, g: torch.Tensor, h: torch.Tensor, shared: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``h'`` minimising ``|h' V diag(shared) - h V diag(g)|`` row by row (``V`` the values), and the relative
    weight error that remains."""
    v = values.float()
    target = v * g.float()
    approx = v * shared.float()
    h = h.float()
    h_new = h * (target * approx).sum(1) / (approx * approx).sum(1).clamp_min(1e-30)
    err = (h_new[:, None] * approx - h[:, None] * target).norm() / (h[:, None] * target).norm().clamp_min(1e-30)
    return h_new, float(err)


@torch.no_grad()
def layer_values(layer: OneBitLinear) -> torch.Tensor:
    """The hard values (int8 ``(out, in)``: signs or ternary codes) of a OneBitLinear in either form."""
    if layer.is_latent:
        return layer.format.codes(layer.weight)
    return layer.format.unpack(layer.weight.data, layer.in_features, torch.float32).to(torch.int8)


@torch.no_grad()
def _make_scales_positive_(layer: OneBitLinear) -> None:
    """Move the sign of every negative ``g[j]`` into column ``j`` (the same function, ``g >= 0``)."""
    negative = layer.scale_in.data < 0
    if not bool(negative.any()):
        return
    if layer.is_latent:
        layer.weight.data[:, negative] = -layer.weight.data[:, negative]
    else:
        values = layer_values(layer)
        values[:, negative] = -values[:, negative]
        layer.weight.data = layer.format.pack(values)
    layer.scale_in.data[negative] = -layer.scale_in.data[negative]


@torch.no_grad()
def tie_input_scales_(model: nn.Module) -> dict[str, float]:
    """Make every group's ``g`` equal (see the module docstring); returns each re-fitted layer's relative weight
    error (empty when the groups were tied already). A ValueError when ``model`` has no such group."""
    groups = scale_groups(model)
    if not groups:
        raise ValueError(f"tie_input_scales: {type(model).__name__} has no LLaMA-type decoder layer "
                         "(self_attn.q/k/v/o_proj and mlp.gate/up_proj as 1-bit layers); allowed: such models only")
    errors = {}
    for group in groups:
        for layer in group.layers:
            _make_scales_positive_(layer)
        shared, exact = shared_scale(group.vectors())
        if exact:
            continue
        whole = group.expand(shared)
        for index, layer in enumerate(group.layers):
            h, err = refit_rows(layer_values(layer), layer.scale_in.data, layer.scale_out.data, whole)
            layer.scale_out.data.copy_(h.to(layer.scale_out.dtype))
            layer.scale_in.data.copy_(whole.to(layer.scale_in.dtype))
            errors[f"{group.name}[{index}]" if len(group.layers) > 1 else group.name] = err
    return errors


@torch.no_grad()
def retie_(groups: list[ScaleGroup]) -> None:
    """Set each group's members to their mean (after an optimizer step moved them apart)."""
    for group in groups:
        members = group.vectors()
        mean = torch.stack([m.float() for m in members]).mean(0)
        for m in members:
            m.copy_(mean.to(m.dtype))


def ties_input_scales(model: nn.Module) -> bool:
    """Whether ``model`` was quantized with ``OneBitConfig(tie_input_scales=True)``."""
    config = getattr(getattr(model, "config", None), "quantization_config", None)
    if isinstance(config, dict):
        return bool(config.get("tie_input_scales", False))
    return bool(getattr(config, "tie_input_scales", False))


def keep_input_scales_tied(optimizer: torch.optim.Optimizer, model: nn.Module):
    """Keep ``model``'s groups tied through training with ``optimizer``: after each of its steps, :func:`retie_`.
    A wrapped optimizer (accelerate's ``AcceleratedOptimizer``, as the Trainer holds it) is hooked on the optimizer
    it wraps. Returns the hook's handle (``.remove()`` stops it)."""
    groups = scale_groups(model)
    inner = optimizer
    while not hasattr(inner, "_optimizer_step_post_hooks") and hasattr(inner, "optimizer"):
        inner = inner.optimizer
    return inner.register_step_post_hook(lambda opt, args, kwargs: retie_(groups))
