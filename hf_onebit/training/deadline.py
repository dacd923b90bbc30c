"""Finish a Trainer run at a wall-clock deadline: the run re-sizes its own step count from its measured step times.

A time budget is planned from a step measured before training (:mod:`hf_onebit.training.budget`), and that step is
not the run's average: the first steps of a run are slower than its steady state (allocator, oneDNN kernels built
per shape; a bf16 step on an AMX CPU measured 4.7 s before training and ran at 2.8 s), so a plan made from it leaves
minutes of the budget unused. :class:`DeadlineCallback` measures the run's own steps and, at a few early points,
sets the step count to what fits before the deadline. Everything that depends on the step count follows it:

* the learning-rate schedule built by :func:`cosine_schedule` reads the same :class:`StepCount`;
* the progressive recipe's phases read ``state.max_steps`` (:class:`~hf_onebit.training.callback.OneBitDistillationCallback`).

Re-planning happens at a few points (by default at 5 %, 25 %, 50 %, 75 % and 90 % of the run's step count as it
stands), each from the steps timed since the previous point, so a run whose steps slow down late (a bf16 run on an
AMX CPU went from 2.9 s to 4.1 s per step in its last third) still ends at its deadline; the early points move the
schedules most, the late ones by a few steps. The count never exceeds ``max_steps`` (what the training data holds).
"""

from __future__ import annotations

import logging
import math
import time

from torch.optim.lr_scheduler import LambdaLR
from transformers import TrainerCallback

logger = logging.getLogger(__name__)


class StepCount:
    """The number of optimizer steps a run makes; shared by the LR schedule and :class:`DeadlineCallback`."""

    def __init__(self, total: int):
        if isinstance(total, bool) or not isinstance(total, int) or total < 1:
            raise ValueError(f"total: got {total!r}; allowed: an integer >= 1")
        self.total = total


def cosine_schedule(optimizer, warmup_steps: int, count: StepCount, min_lr_rate: float = 0.05) -> LambdaLR:
    """Linear warm-up over ``warmup_steps``, then a cosine from the full learning rate down to ``min_lr_rate`` of it
    at step ``count.total`` (read on every step, so a re-sized run decays to its new end)."""
    if not 0 <= min_lr_rate <= 1:
        raise ValueError(f"min_lr_rate: got {min_lr_rate!r}; allowed: 0 to 1")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / max(1, count.total - warmup_steps))
        return min_lr_rate + (1 - min_lr_rate) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


class DeadlineCallback(TrainerCallback):
    """Re-size the run to end by ``deadline`` (a ``time.monotonic()`` value) from its own step times.

    At each fraction in ``replan_at`` of the run's current step count (and not before ``skip + 2`` steps), the mean
    time of the steps since the previous re-plan (for the first: the steps after the first ``skip + 1``, whose first
    interval ends step ``skip + 2``) gives the steps that still fit; ``state.max_steps`` and ``count.total`` become
    ``done + fit`` (at most ``max_steps``; the run stops at once when nothing fits). Every re-plan is kept in :attr:`replans` as
    ``(step, seconds per step, new total)``; each change is logged. ``progress``: the Trainer's
    ``transformers.ProgressCallback``, whose progress bar then shows the new total.
    """

    def __init__(self, deadline: float, count: StepCount, max_steps: int,
                 replan_at: tuple = (0.05, 0.25, 0.5, 0.75, 0.9),
                 skip: int = 2, clock=time.monotonic, progress=None):
        if not all(0 < f < 1 for f in replan_at):
            raise ValueError(f"replan_at: got {replan_at!r}; allowed: fractions between 0 and 1")
        self.deadline = deadline
        self.count = count
        self.max_steps = max(max_steps, count.total)
        self.skip = skip
        self.clock = clock
        self.progress = progress
        self._fractions = sorted(replan_at)
        self._ends: list[float] = []
        self._window_start = skip  # index in _ends of the first end of the current timing window
        self.replans: list[tuple[int, float, int]] = []

    def on_step_end(self, args, state, control, **kwargs):
        self._ends.append(self.clock())
        step = state.global_step
        due = [f for f in self._fractions if step >= max(self.skip + 2, math.ceil(f * self.count.total))]
        if not due or len(self._ends) < self.skip + 2:
            return control
        self._fractions = [f for f in self._fractions if f not in due]
        timed = self._ends[self._window_start:]  # >= 2 ends: re-plans are at least one step apart
        self._window_start = len(self._ends) - 1
        per_step = (timed[-1] - timed[0]) / (len(timed) - 1)
        fit = int(max(0.0, self.deadline - timed[-1]) // per_step) if per_step > 0 else self.max_steps
        total = min(self.max_steps, step + fit)
        self.replans.append((step, per_step, total))
        if total != state.max_steps:
            logger.warning("time budget: %.2f s per step measured over steps %d-%d; %d steps now fit (planned %d)",
                           per_step, step - len(timed) + 2, step, total, state.max_steps)
            state.max_steps = total
            self.count.total = total
            bar = getattr(self.progress, "training_bar", None)  # None before training and with tqdm disabled
            if bar is not None:
                bar.total = total
                bar.refresh()
        if total <= step:
            control.should_training_stop = True  # the deadline has passed: this was the last step
        return control
