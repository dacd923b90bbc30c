"""The progressive schedule: which stage and which temperature ``t`` every optimizer step uses.

A run of ``total_steps`` optimizer steps is split into

* ``init_steps`` steps of binary-aware initialisation (stage ``"init"``; weights frozen, the per-input scale learns),
* the main stage, cut into ``phases`` equal phases; phase ``c`` (1-based) uses ``t(c) = scale * (exp(rate * c) - 1)``
  (Tu et al.: ``scale=1.3, rate=0.22, phases=20`` -> t goes 0.32, 0.72, ..., 104.6),

and the model is evaluated, packed and saved with the hard sign (``t = inf``) afterwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def _check_positive(name: str, value, integer: bool = False) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not value > 0:
        raise ValueError(f"ProgressiveSchedule.{name}: got {value!r}; allowed: a {'positive integer' if integer else 'number > 0'}")


@dataclass(frozen=True)
class ProgressiveSchedule:
    """Phase and temperature per step. ``t_end`` (optional) rescales the curve so that the last phase uses it."""

    phases: int = 20
    scale: float = 1.3
    rate: float = 0.22
    t_end: float | None = None
    init_steps: int = 0

    def __post_init__(self):
        _check_positive("phases", self.phases, integer=True)
        _check_positive("scale", self.scale)
        _check_positive("rate", self.rate)
        if self.t_end is not None:
            _check_positive("t_end", self.t_end)
        if isinstance(self.init_steps, bool) or not isinstance(self.init_steps, int) or self.init_steps < 0:
            raise ValueError(f"ProgressiveSchedule.init_steps: got {self.init_steps!r}; allowed: an integer >= 0")

    @property
    def curve_scale(self) -> float:
        if self.t_end is None:
            return self.scale
        return self.t_end / math.expm1(self.rate * self.phases)

    def temperature(self, phase: int) -> float:
        """``t`` of a 1-based phase."""
        if not 1 <= phase <= self.phases:
            raise ValueError(f"phase: got {phase}; allowed: 1..{self.phases}")
        return self.curve_scale * math.expm1(self.rate * phase)

    def check_total(self, total_steps: int) -> None:
        if total_steps <= self.init_steps:
            raise ValueError(
                f"max_steps={total_steps} leaves no step for the main stage after init_steps={self.init_steps}; "
                "allowed: max_steps > init_steps"
            )

    def stage(self, step: int) -> str:
        """``"init"`` (binary-aware initialisation) or ``"main"`` for the 0-based optimizer step ``step``."""
        return "init" if step < self.init_steps else "main"

    def phase(self, step: int, total_steps: int) -> int:
        """1-based phase of 0-based step ``step`` (0 during the init stage)."""
        self.check_total(total_steps)
        if step < self.init_steps:
            return 0
        main = total_steps - self.init_steps
        return min(self.phases, 1 + (step - self.init_steps) * self.phases // main)

    def t_at(self, step: int, total_steps: int) -> float:
        """Temperature used at 0-based step ``step`` (``t`` of phase 1 during the init stage: unused there)."""
        return self.temperature(max(1, self.phase(step, total_steps)))

    def is_last_phase(self, step: int, total_steps: int) -> bool:
        return self.phase(step, total_steps) == self.phases
