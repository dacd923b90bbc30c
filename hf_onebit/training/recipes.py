"""Training recipes: how the latent 1-bit layers of a student are initialised and binarised during distillation.

``onebit`` (Xu et al. 2024)
    SVID-initialised ``g``/``h`` (done by the quantizer at load), latent weights = the pretrained weights, hard sign
    forward with the tanh-derivative backward (the default binarizer of :class:`OneBitLinear`). Optional
    post-LayerNorm comes from ``OneBitConfig(post_layernorm=True)`` at load time.
``progressive`` (Tu et al. 2025)
    ``F(x, t) = tanh(t x) / tanh(t)`` forward and backward, ``t`` raised over 20 phases, hard sign at the end;
    dual-scaling compensation (learnable row scale ``S_l`` = ``scale_out`` times the recomputed row absmean ``S_a``);
    binary-aware initialisation (``init_steps`` steps learning the input scale ``S_t`` with frozen dense weights, then
    ``W_latent = W / S_t``). Each piece can be switched off for ablations.

Either recipe ends in the same packed format: :func:`finalize_` folds every row scale into ``scale_out`` so that the
hard-sign latent model and its packed form compute the same function.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from ..modules import OneBitLinear, hard_sign
from .binarizers import (
    BinaryAwareInitBinarizer,
    ProgressiveBinarizer,
    Temperature,
    finalize_module_,
    fold_binary_aware_init_,
    row_absmean,
)
from .schedule import ProgressiveSchedule

RECIPES = ("progressive", "onebit")


@dataclass(frozen=True)
class Recipe:
    """What a distillation run does to the student's 1-bit layers (see the module docstring)."""

    name: str = "progressive"
    dual_scaling: bool = True
    binary_aware_init: bool = True
    schedule: ProgressiveSchedule = field(default_factory=ProgressiveSchedule)

    def __post_init__(self):
        if self.name not in RECIPES:
            raise ValueError(f"Recipe.name: got {self.name!r}; allowed: one of {RECIPES}")
        for flag in ("dual_scaling", "binary_aware_init"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"Recipe.{flag}: got {getattr(self, flag)!r}; allowed: True or False")
        if not isinstance(self.schedule, ProgressiveSchedule):
            raise ValueError(f"Recipe.schedule: got {type(self.schedule).__name__}; allowed: a ProgressiveSchedule")

    @property
    def progressive(self) -> bool:
        return self.name == "progressive"

    @property
    def init_steps(self) -> int:
        return self.schedule.init_steps if (self.progressive and self.binary_aware_init) else 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def get_recipe(recipe: "str | Recipe" = "progressive", **overrides) -> Recipe:
    """A :class:`Recipe` from a name (``"progressive"``, ``"onebit"``) or a Recipe, with field overrides.

    Schedule fields (``phases``, ``scale``, ``rate``, ``t_end``, ``init_steps``) may be given directly.
    """
    if isinstance(recipe, Recipe):
        base = recipe
    elif isinstance(recipe, str):
        if recipe not in RECIPES:
            raise ValueError(f"recipe: got {recipe!r}; allowed: one of {RECIPES}")
        default_init = 20 if recipe == "progressive" else 0
        base = Recipe(name=recipe, schedule=ProgressiveSchedule(init_steps=default_init),
                      dual_scaling=recipe == "progressive", binary_aware_init=recipe == "progressive")
    else:
        raise ValueError(f"recipe: got {type(recipe).__name__}; allowed: 'progressive', 'onebit' or a Recipe")
    schedule_fields = {f.name for f in dataclasses.fields(ProgressiveSchedule)}
    sched = {k: overrides.pop(k) for k in list(overrides) if k in schedule_fields}
    recipe_fields = {f.name for f in dataclasses.fields(Recipe)}
    unknown = sorted(set(overrides) - recipe_fields)
    if unknown:
        raise ValueError(f"recipe overrides: unknown field(s) {unknown}; allowed: {sorted(recipe_fields | schedule_fields)}")
    if sched:
        overrides["schedule"] = dataclasses.replace(overrides.get("schedule", base.schedule), **sched)
    return dataclasses.replace(base, **overrides)


def latent_layers(model) -> list[tuple[str, OneBitLinear]]:
    """Every latent (trainable) OneBitLinear of ``model``; raises when there is none."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, OneBitLinear) and m.is_latent]
    if not layers:
        raise ValueError(
            "the student has no latent OneBitLinear layer: load it with "
            "from_pretrained(..., quantization_config=OneBitConfig(training=True))"
        )
    return layers


@torch.no_grad()
def apply_recipe_(model, recipe: Recipe) -> Temperature:
    """Prepare a freshly loaded latent student for ``recipe``; returns the shared temperature (progressive)."""
    temperature = Temperature(math.inf)
    for _, module in latent_layers(model):
        if not recipe.progressive:
            module.binarizer = hard_sign
            continue
        # progressive: g = S_t (init 1), h = S_l (init 1); S_a comes from the latent weights themselves.
        module.scale_in.fill_(1.0)
        module.scale_out.fill_(1.0)
        module.binarizer = BinaryAwareInitBinarizer(module)
    if recipe.progressive and recipe.init_steps == 0:
        start_main_stage_(model, recipe, temperature, transform_weights=True)
    return temperature


@torch.no_grad()
def start_main_stage_(model, recipe: Recipe, temperature: Temperature, transform_weights: bool = True) -> None:
    """Install the progressive binarizers; with ``transform_weights`` fold ``S_t`` (and, without dual scaling,
    normalise each row by its absmean, moved into ``scale_out``). Resuming from a checkpoint passes False."""
    for _, module in latent_layers(model):
        if transform_weights:
            if recipe.binary_aware_init:
                fold_binary_aware_init_(module)
            if not recipe.dual_scaling:
                s = row_absmean(module.weight)
                module.weight.div_(s)
                module.scale_out.mul_(s.squeeze(1))
        module.binarizer = ProgressiveBinarizer(temperature, dual_scaling=recipe.dual_scaling)


def stage_of(model) -> str:
    """``"init"`` while binary-aware initialisation binarizers are installed, else ``"main"``."""
    return "init" if any(isinstance(m.binarizer, BinaryAwareInitBinarizer) for _, m in latent_layers(model)) else "main"


@torch.no_grad()
def finalize_(model) -> None:
    """Fold every row scale into ``scale_out`` and switch all latent layers to the hard sign, in place.

    Afterwards the latent model computes exactly the function its packed form (``save_pretrained``, ``pack_``) computes.
    """
    for _, module in latent_layers(model):
        finalize_module_(module)
