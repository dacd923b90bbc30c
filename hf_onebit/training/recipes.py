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

``bitnet`` (BitNet b1.58 practice; the default for ``weight_format="ternary"``)
    The hard quantizer of the format (absmean ternary for ternary layers, sign for binary ones) with a
    straight-through gradient from the first step; a two-stage learning rate (at ``cooldown_at`` of the run the
    learning rate drops abruptly by ``cooldown_factor`` on top of the Trainer's own schedule) and weight decay 0 for the
    second stage, so that the codes can commit.

Ternary layers follow the same recipes with the ternary step in place of the sign (see
:mod:`hf_onebit.training.binarizers`); ``onebit`` is binary-only.

Every recipe ends in the same packed format: :func:`finalize_` folds every row scale into ``scale_out`` so that the
hard-sign latent model and its packed form compute the same function.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from ..formats import FORMATS, get_format
from ..nn.linear import OneBitLinear
from .binarizers import (
    BinaryAwareInitBinarizer,
    FrozenCodes,
    ProgressiveBinarizer,
    Temperature,
    finalize_module_,
    fold_binary_aware_init_,
    freeze_codes_,
    quantizer_for,
    row_absmean,
)
from .schedule import ProgressiveSchedule

RECIPES = ("progressive", "onebit", "bitnet")
#: Recipe used when none is given, per weight format of the student.
DEFAULT_RECIPES = {name: fmt.default_recipe for name, fmt in FORMATS.items()}


@dataclass(frozen=True)
class Recipe:
    """What a distillation run does to the student's 1-bit layers (see the module docstring)."""

    name: str = "progressive"
    dual_scaling: bool = True
    binary_aware_init: bool = True
    schedule: ProgressiveSchedule = field(default_factory=ProgressiveSchedule)
    #: ``bitnet`` only: fraction of the run after which the learning rate drops (None: no cool-down).
    cooldown_at: float | None = None
    #: ``bitnet`` only: the learning-rate multiplier of the cool-down stage.
    cooldown_factor: float = 0.25
    #: Fraction of the run from which the codes are frozen (hard, row scale folded) and only the scale vectors,
    #: norms and embeddings train (:func:`freeze_codes_`); None: the latent weights train to the end.
    freeze_codes_at: float | None = None

    def __post_init__(self):
        if self.name not in RECIPES:
            raise ValueError(f"Recipe.name: got {self.name!r}; allowed: one of {RECIPES}")
        if self.cooldown_at is not None and not (isinstance(self.cooldown_at, (int, float)) and 0 < self.cooldown_at < 1):
            raise ValueError(f"Recipe.cooldown_at: got {self.cooldown_at!r}; allowed: None or a fraction in (0, 1)")
        if self.freeze_codes_at is not None and not (
                isinstance(self.freeze_codes_at, (int, float)) and not isinstance(self.freeze_codes_at, bool)
                and 0 < self.freeze_codes_at < 1):
            raise ValueError(f"Recipe.freeze_codes_at: got {self.freeze_codes_at!r}; allowed: None or a fraction in "
                             "(0, 1) of the run")
        if not (isinstance(self.cooldown_factor, (int, float)) and 0 < self.cooldown_factor <= 1):
            raise ValueError(f"Recipe.cooldown_factor: got {self.cooldown_factor!r}; allowed: a number in (0, 1]")
        for flag in ("dual_scaling", "binary_aware_init"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"Recipe.{flag}: got {getattr(self, flag)!r}; allowed: True or False")
        if not isinstance(self.schedule, ProgressiveSchedule):
            raise ValueError(f"Recipe.schedule: got {type(self.schedule).__name__}; allowed: a ProgressiveSchedule")

    @property
    def progressive(self) -> bool:
        return self.name == "progressive"

    def in_cooldown(self, step: int, total_steps: int) -> bool:
        """True from ``cooldown_at * total_steps`` on (never without a cool-down)."""
        return self.cooldown_at is not None and step >= self.cooldown_at * total_steps

    def codes_frozen_at(self, step: int, total_steps: int) -> bool:
        """True from ``freeze_codes_at * total_steps`` on (never without ``freeze_codes_at``)."""
        return self.freeze_codes_at is not None and step >= self.freeze_codes_at * total_steps

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
        # one binary-aware init step: the validation split measured 20 steps / 6 % of a short run as worse
        default_init = 1 if recipe == "progressive" else 0
        base = Recipe(name=recipe, schedule=ProgressiveSchedule(init_steps=default_init),
                      dual_scaling=recipe == "progressive", binary_aware_init=recipe == "progressive",
                      cooldown_at=0.5 if recipe == "bitnet" else None)
    else:
        raise ValueError(f"recipe: got {type(recipe).__name__}; allowed: one of {RECIPES} or a Recipe")
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


def weight_format_of(model) -> str:
    """``"binary"`` or ``"ternary"``: the format of the student's latent layers (an error if they are mixed)."""
    formats = {m.weight_format for _, m in latent_layers(model)}
    if len(formats) != 1:
        raise ValueError(f"the student mixes weight formats {sorted(formats)}; allowed: one format per model")
    return formats.pop()


def default_recipe_for(model) -> str:
    """The recipe used when none is given: ``progressive`` for binary students, ``bitnet`` for ternary ones."""
    return get_format(weight_format_of(model)).default_recipe


@torch.no_grad()
def apply_recipe_(model, recipe: Recipe) -> Temperature:
    """Prepare a freshly loaded latent student for ``recipe``; returns the shared temperature (progressive)."""
    if recipe.name == "onebit" and weight_format_of(model) != "binary":
        raise ValueError("recipe: 'onebit' (SVID + sign) is for binary students; allowed for a ternary student: "
                         "'progressive' (default) or 'bitnet'")
    temperature = Temperature(math.inf)
    for _, module in latent_layers(model):
        if not recipe.progressive:
            module.binarizer = quantizer_for(module)
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
        module.binarizer = ProgressiveBinarizer(temperature, dual_scaling=recipe.dual_scaling,
                                                weight_format=module.weight_format)


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


@torch.no_grad()
def freeze_codes_all_(model, dtype: torch.dtype, fold: bool = True) -> None:
    """:func:`~hf_onebit.training.binarizers.freeze_codes_` on every latent layer (see :attr:`Recipe.freeze_codes_at`)."""
    for _, module in latent_layers(model):
        freeze_codes_(module, dtype, fold=fold)


def codes_frozen(model) -> bool:
    """True when the latent layers run on frozen codes (:func:`freeze_codes_all_`)."""
    return all(isinstance(m.binarizer, FrozenCodes) for _, m in latent_layers(model))


@torch.no_grad()
def unfreeze_codes_(model) -> None:
    """After a run that froze its codes: the frozen layers' latent weights take gradients again, with the hard
    quantizer (the same function; their row scale is already in ``scale_out``)."""
    for _, module in latent_layers(model):
        if isinstance(module.binarizer, FrozenCodes):
            module.binarizer = quantizer_for(module)
            module.weight.requires_grad_(True)
