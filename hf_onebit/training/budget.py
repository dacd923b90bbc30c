"""A time budget for distillation: measure what a step costs on this machine, then size every stage to fit.

    times = measure_step_times(student, teacher, seq_len=256, batch_size=4)
    plan = plan_budget(60 * 60, times, blockwise_share=0.5)
    print(plan.table())

:func:`measure_step_times` times one block-wise step, one block's forward pass and one end-to-end distillation step
(student forward and backward with the loss's hidden states, teacher forward, an optimizer step with learning rate 0:
nothing in the models changes). :func:`plan_budget` gives the block-wise stage ``blockwise_share`` of what is left
after the measurement and the end-to-end stage the rest; steps are whole numbers, so the plan's estimate is at most
the budget. The measured step is not the run's average (a run's first steps are slower than its steady state), so
the plan also carries a deadline, and the end-to-end stage re-sizes its step count to it from its own step times
(:mod:`hf_onebit.training.deadline`); the block-wise stage's steps stay as planned.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from dataclasses import asdict, dataclass

import torch

#: Share of a time budget the block-wise stage gets by default (the rest goes to end-to-end distillation).
DEFAULT_BLOCKWISE_SHARE = 0.5
#: Fewest end-to-end steps a time budget should buy before ``plan_for_budget`` shrinks the step (``fit_batch``,
#: ``fit_seq_len``). On an AVX2 CPU (validation split, docs/benchmarks-quality-zen1.md) the smallest step won at every
#: budget measured: 220 steps of 1 x 64 tokens against 160 of 1 x 128 in ~11 minutes, 300 of 1 x 64 against 224 of
#: 1 x 128 in ~18 minutes (1.23x closer to the teacher, in less time); on an AVX-512 CPU in bf16 (test split) 313 steps
#: of 1 x 64 against 68 of 4 x 256 in 10 minutes (2.5x closer); the AMX CPU's 60-minute run (1141 steps of 4 x 256)
#: stays above the threshold.
MIN_E2E_STEPS = 1000
#: The largest step of sequences of :data:`MIN_FIT_SEQ_LEN` tokens with more than one sequence (4 x 64, then 2 x 64:
#: :func:`fallback_shapes`) that buys this many is taken whenever it is larger than the step that buys
#: :data:`MIN_E2E_STEPS` (or none does); the smallest step only when neither exists: past a few hundred steps, more
#: sequences a step pay. On an AVX-512 CPU in bf16 (validation split, docs/benchmarks-quality-zen4.md) 380 steps of
#: 4 x 64 tokens ended 1.07x closer to the teacher than 560 of 2 x 64, and those 1.22x closer than 690 of 1 x 64, in the
#: same ~10.5-11.5 minutes (350 keeps that 380 within reach); on the AVX2 CPU the smaller step won at 220-300 steps
#: (above), which this floor keeps. At 60 minutes on the AVX-512 CPU 1307 steps of 2 x 256 ended 1.06x closer than 712
#: of 4 x 256: :data:`MIN_E2E_STEPS` stays. In 15 minutes on the AVX-512 CPU (bf16; both splits), where 1 x 64 is the
#: largest step that buys 1000, 523 steps of 4 x 64 ended 1.33x closer than 897 of 1 x 64 (validation; test 1.34x): the
#: fallback's claim holds above the threshold too.
FALLBACK_E2E_STEPS = 350
#: ``plan_for_budget`` also times the next larger step than the one it chose when the line through the measured steps
#: prices it within this factor of what buys :data:`MIN_E2E_STEPS`: on an AMD EPYC Zen 5 in bf16 the line through the
#: two smallest steps priced 4 x 256 above the 60-minute threshold, and the plan took 2 x 256; measured, 4 x 256 buys
#: 1227 steps.
RECHECK_MARGIN = 1.2
#: The shortest training sequence ``plan_for_budget(fit_seq_len=True)`` cuts the sequences to.
MIN_FIT_SEQ_LEN = 64
#: Block passes over the calibration set per block besides its training steps: the teacher block's targets, the
#: input moments of the scale fit, and the student block's output (the next block's input).
PASSES_PER_BLOCK = 3


def parse_duration(text: str) -> float:
    """Seconds in ``"90s"``, ``"15m"``, ``"1.5h"``, ``"1h30m"`` or a bare number of minutes (``"60"``)."""
    value = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        seconds = float(value) * 60
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", value)
        if not parts or re.sub(r"(\d+(?:\.\d+)?)\s*([hms])", "", value).strip():
            raise ValueError(f"--time-budget: got {text!r}; allowed: e.g. 90s, 15m, 1.5h, 1h30m or minutes")
        seconds = sum(float(n) * {"h": 3600, "m": 60, "s": 1}[unit] for n, unit in parts)
    if not seconds > 0:
        raise ValueError(f"--time-budget: got {text!r}; allowed: a duration > 0")
    return seconds


@dataclass(frozen=True)
class StepTimes:
    """Seconds per step on this machine (:func:`measure_step_times`)."""

    block_step_s: float  # one block-wise optimizer step: batch x seq tokens through one block, forward + backward
    block_pass_s: float  # one block's forward over batch x seq tokens, no gradient
    e2e_step_s: float  # one end-to-end distillation step
    n_blocks: int
    measured_s: float  # what the measurement itself took
    teacher_forward_s: float = 0.0  # the teacher's forward inside one end-to-end step

    def e2e_step_cached_s(self, epochs: float) -> float:
        """An end-to-end step on cached teacher targets, each sequence seen ``epochs`` times: no teacher forward in
        the step, one per sequence while the targets are computed (spread over the steps here)."""
        return self.e2e_step_s - self.teacher_forward_s + self.teacher_forward_s / epochs


@dataclass(frozen=True)
class BudgetPlan:
    """Steps of each stage for a time budget (:func:`plan_budget`)."""

    budget_s: float
    blockwise_steps: int  # per block; 0 = no block-wise stage
    calibration_sequences: int
    e2e_steps: int
    estimated_s: float
    times: StepTimes

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        from ..eval import format_table

        t = self.times
        blocks = f"block step {t.block_step_s:.3f} s, block pass {t.block_pass_s:.3f} s, " if t.block_step_s else ""
        rows = [["measured on this machine", f"{blocks}end-to-end step {t.e2e_step_s:.2f} s "
                 f"({t.measured_s:.0f} s to measure)"],
                ["block-wise stage", f"{self.blockwise_steps} steps per block x {t.n_blocks} blocks, "
                 f"{self.calibration_sequences} calibration sequences" if self.blockwise_steps else "off"],
                ["end-to-end stage", f"{self.e2e_steps} steps"],
                ["estimated", f"{self.estimated_s / 60:.1f} of {self.budget_s / 60:.1f} min"]]
        return format_table(["time budget", "plan"], rows)


def blockwise_seconds(times: StepTimes, steps: int, calibration_sequences: int, batch_size: int) -> float:
    """Estimated seconds of the block-wise stage."""
    passes = PASSES_PER_BLOCK * math.ceil(calibration_sequences / batch_size) * times.block_pass_s
    return times.n_blocks * (steps * times.block_step_s + passes)


def calibration_sequences(steps: int, batch_size: int, epochs: float = 2.0, maximum: int = 4096) -> int:
    """Sequences that ``steps`` block-wise steps of ``batch_size`` see ``epochs`` times (whole batches, at least
    one, at most ``maximum``)."""
    whole = math.ceil(steps * batch_size / epochs / batch_size) * batch_size
    return min(maximum // batch_size * batch_size, max(batch_size, whole))


def plan_budget(seconds: float, times: StepTimes, blockwise_share: float = 0.5, batch_size: int = 4,
                epochs: float = 2.0, max_calibration: int = 4096, cached_epochs: float = 0.0) -> BudgetPlan:
    """Split ``seconds`` (minus what the measurement took) between the stages; see the module docstring.

    The block-wise stage sees its calibration sequences ``epochs`` times: ``steps x batch_size / epochs`` of them
    (at most ``max_calibration``; every block's inputs and targets are held in memory). ``cached_epochs`` > 0: the
    end-to-end stage runs on cached teacher targets, each sequence seen that many times
    (:meth:`StepTimes.e2e_step_cached_s`).
    """
    if not seconds > 0:
        raise ValueError(f"time budget: got {seconds!r} s; allowed: > 0")
    if not 0 <= blockwise_share <= 1:
        raise ValueError(f"blockwise_share: got {blockwise_share!r}; allowed: 0 to 1")
    left = seconds - times.measured_s
    if left <= times.e2e_step_s:
        raise ValueError(f"time budget: {seconds:.0f} s leave {left:.0f} s after measuring the steps "
                         f"({times.measured_s:.0f} s), less than one end-to-end step ({times.e2e_step_s:.1f} s); "
                         "allowed: a longer budget")
    steps = 0
    calibration = 0
    if blockwise_share > 0:
        share = left * blockwise_share
        # steps s with calibration c = s * b / epochs: n_blocks * (s * step + passes(c)) <= share
        per_step = times.n_blocks * (times.block_step_s
                                     + PASSES_PER_BLOCK * times.block_pass_s / epochs)
        steps = max(0, int(share // per_step))
        calibration = max(calibration_sequences(steps, batch_size, epochs, max_calibration),
                          min(64, max_calibration) // batch_size * batch_size)
        while steps and blockwise_seconds(times, steps, calibration, batch_size) > share:
            steps -= 1
    used = blockwise_seconds(times, steps, calibration, batch_size) if steps else 0.0
    e2e_step_s = times.e2e_step_cached_s(cached_epochs) if cached_epochs > 0 else times.e2e_step_s
    e2e = max(0, int((left - used) // e2e_step_s))
    estimated = times.measured_s + used + e2e * e2e_step_s
    return BudgetPlan(seconds, steps, calibration if steps else 0, e2e, estimated, times)


def _time(fn, repeats: int = 2, warmups: int = 1, fastest: bool = False) -> float:
    """Seconds of one call of ``fn`` after ``warmups`` calls (allocator, first-call costs): the mean of ``repeats``
    timed calls, or with ``fastest`` the fastest of them."""
    for _ in range(warmups):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) if fastest else sum(times) / repeats


def _time_block(student, teacher, ids, precision) -> tuple[float, float]:
    """Seconds of one block-wise step and of one block pass over ``ids``' hidden states (the student's first block;
    its gradients are dropped)."""
    from .blockwise import capture_block_inputs, decoder_layers, run_block

    hidden, kwargs = capture_block_inputs(teacher, ids)
    layer = decoder_layers(student)[0]
    params = [p for p in layer.parameters() if p.is_floating_point()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)

    def block_step():
        with precision():
            out = run_block(layer, hidden, kwargs)
        out.float().pow(2).mean().backward()
        for p in params:
            p.grad = None

    def block_pass():
        with torch.no_grad():
            run_block(layer, hidden, kwargs)

    try:
        return _time(block_step), _time(block_pass)
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def measure_step_times(student, teacher, seq_len: int, batch_size: int, e2e_batch_size: int | None = None,
                       loss=None, vocab_size: int | None = None, bf16: bool = False,
                       blockwise: bool = True, progressive: bool = False) -> StepTimes:
    """Time one block-wise step, one block pass and one end-to-end step (the faster of two after two warm-ups) of
    ``student`` / ``teacher`` (random tokens; nothing in either model changes). ``loss`` is the end-to-end stage's
    DistillationLoss (default: KL + hidden).
    ``bf16``: the steps run as the stages train with bf16 on - the block-wise step under bf16 autocast, the end-to-end
    step as a ``TrainingArguments(bf16=True)`` step does: the student under bf16 autocast, the teacher on bf16 weight
    copies (on a CPU with AMX that step is several times faster than float32). ``blockwise=False``: the block-wise
    step and pass are not timed (0 s; for a plan without the block-wise stage). ``progressive``: the end-to-end step
    runs with the progressive binarizer the recipe's main stage installs (at a finite ``t``; the layers' own binarizers
    are back afterwards) instead of the student's hard quantizer - a different path (on a CPU: one kernel pass each
    way against several PyTorch passes; AMD EPYC Zen 4, bf16, 1 x 64 tokens: 1.9 s measured where the run's steps
    took 1.1-1.3 s)."""
    import contextlib

    from .binarizers import ProgressiveBinarizer, Temperature
    from .blockwise import decoder_layers
    from .heap import RetainedHeap
    from .losses import DistillationLoss
    from .recipes import latent_layers
    from .relations import ProjectionCapture
    from .teacher_cast import TeacherWeightCast, teacher_precision

    start = time.perf_counter()
    loss = loss or DistillationLoss()
    vocab = vocab_size or student.config.vocab_size
    device = next(student.parameters()).device
    gen = torch.Generator().manual_seed(0)
    was_training = student.training

    def student_precision():
        return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    block_step_s = block_pass_s = 0.0
    if blockwise:
        ids = torch.randint(vocab, (batch_size, seq_len), generator=gen).to(device)
        try:
            student.train()
            block_step_s, block_pass_s = _time_block(student, teacher, ids, student_precision)
        finally:
            student.train(was_training)
    e2e_ids = torch.randint(vocab, (e2e_batch_size or batch_size, seq_len), generator=gen).to(device)
    trainable = [p for p in student.parameters() if p.requires_grad]
    frozen_optimizer = torch.optim.AdamW(trainable, lr=0.0, weight_decay=0.0)  # lr 0: the step changes nothing

    teacher_s = []
    cast = TeacherWeightCast(teacher, torch.bfloat16) if bf16 else None
    # the attention-relation term's projections, recorded as the callback records them
    captures = [ProjectionCapture(m, loss.attention_layers) for m in (student, teacher)] if loss.needs_relations else []

    def recording(i):
        return captures[i].recording() if captures else contextlib.nullcontext()

    def e2e_step():
        tick = time.perf_counter()
        with torch.no_grad(), teacher_precision(cast, device.type), recording(1):
            t = teacher(input_ids=e2e_ids, output_hidden_states=loss.needs_hidden_states, use_cache=False)
        teacher_s.append(time.perf_counter() - tick)
        with student_precision():
            with recording(0):
                s = student(input_ids=e2e_ids, output_hidden_states=loss.needs_hidden_states, use_cache=False)
            mask = loss.token_mask(e2e_ids)
            relations = (captures[0].take(), captures[1].take(), captures[0].head_dim) if captures else None
            terms = loss.terms(s.logits, t.logits, mask, s.get("hidden_states"), t.get("hidden_states"),
                               relations=relations)
        loss.combine(terms).backward()
        frozen_optimizer.step()
        frozen_optimizer.zero_grad(set_to_none=True)

    saved = [(m, m.binarizer) for _, m in latent_layers(student)] if progressive else []
    # the heap as the callback keeps it while training (hf_onebit.training.heap): without it, every step here
    # faults its large buffers in afresh (AMD EPYC Zen 4, bf16, 1 x 64 tokens: 1.31 s measured, 0.8 s in the run)
    heap = RetainedHeap() if device.type == "cpu" else None
    try:
        student.train()
        for m, _ in saved:
            m.binarizer = ProgressiveBinarizer(Temperature(1.0), weight_format=m.weight_format)
        # The first steps of a run are slower than its steady state (AMD EPYC Zen 4, bf16, 1 x 64 tokens: one warm-up
        # and one timed step measured 2.3 s, the run's steps took 1.1-1.3 s): two warm-ups, the faster of two steps.
        e2e_step_s = _time(e2e_step, repeats=2, warmups=2, fastest=True)
    finally:
        for m, binarizer in saved:
            m.binarizer = binarizer
        for capture in captures:
            capture.remove()
        student.train(was_training)
        del frozen_optimizer
        if heap is not None:
            heap.release()
    return StepTimes(block_step_s, block_pass_s, e2e_step_s, len(decoder_layers(student)),
                     time.perf_counter() - start, teacher_forward_s=min(teacher_s[-2:]))


def step_shapes(batch_size: int, seq_len: int, fit_batch: bool = True, fit_seq_len: bool = True,
                min_seq_len: int = MIN_FIT_SEQ_LEN) -> list[tuple[int, int]]:
    """The ``(sequences, tokens per sequence)`` an end-to-end step may take, largest first (by tokens; the order of
    the ladder among equals): ``(batch_size, seq_len)``, then (``fit_batch``) the batch halved down to 1, then
    (``fit_seq_len``) the sequences halved while they keep at least ``min_seq_len`` tokens. With both, the step of
    twice ``min_seq_len`` tokens holds two sequences of ``min_seq_len`` instead of one (2 x 64 rather than 1 x 128: on
    the validation split two sequences ended closer to the teacher, at a step no dearer; docs/benchmarks-quality.md),
    and the batch's larger halvings above 2 get steps of ``min_seq_len`` tokens too (4 x 64 from a batch of 4: the
    :func:`fallback_shapes`)."""
    shapes = [(batch_size, seq_len)]
    b, s = batch_size, seq_len
    while True:
        if fit_batch and b > 1:
            b //= 2
        elif fit_seq_len and s // 2 >= min_seq_len:
            s //= 2
        else:
            break
        shapes.append((b, s))
    if fit_batch and fit_seq_len and len(shapes) > 2 and shapes[-2] == (1, 2 * min_seq_len):
        shapes[-2] = (2, min_seq_len)  # (a step the ladder made, never the one asked for)
        b = batch_size
        while b > 2:
            if (b, min_seq_len) not in shapes:
                shapes.append((b, min_seq_len))
            b //= 2
        shapes.sort(key=lambda bs: -bs[0] * bs[1])  # stable: equal sizes keep the ladder's order
    return shapes


def fallback_shapes(shapes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The steps of ``shapes`` (:func:`step_shapes`, largest first) a budget that buys :data:`MIN_E2E_STEPS` of none
    falls back to: those with the smallest step's sequence length and more than one sequence; when the smallest step
    itself has more than one sequence (a ladder without the batch halved), the second smallest."""
    if len(shapes) < 2:
        return []
    seq_len = shapes[-1][1]
    found = [bs for bs in shapes[:-1] if bs[1] == seq_len and bs[0] > 1]
    return found if shapes[-1][0] == 1 and found else [shapes[-2]]


def step_cost(small: tuple[int, float], large: tuple[int, float]) -> tuple[float, float]:
    """``(fixed_s, per_token_s)`` of a step from two measured ``(tokens, seconds)`` points: the line through them (a
    step's per-step work - the binarizer over every weight, the optimizer - plus its work per token), neither part
    below 0 (a noisy measurement that makes the larger step faster gives a cost without a per-token part)."""
    (n_small, s_small), (n_large, s_large) = small, large
    if not 0 < n_small < n_large:
        raise ValueError(f"step_cost: got {n_small} and {n_large} tokens; allowed: 0 < small < large")
    per_token = max(0.0, (s_large - s_small) / (n_large - n_small))
    return max(0.0, s_small - per_token * n_small), per_token


def step_price(shape: tuple[int, int], fixed_s: float, per_token_s: float) -> float:
    """Seconds a step of ``shape`` = ``(sequences, tokens per sequence)`` costs on the line of :func:`step_cost`."""
    return fixed_s + per_token_s * shape[0] * shape[1]


def fit_step_shape(seconds: float, shapes: list[tuple[int, int]], fixed_s: float, per_token_s: float,
                   min_steps: int = MIN_E2E_STEPS, fallback_steps: int = FALLBACK_E2E_STEPS) -> tuple[int, int]:
    """The larger (in tokens) of two candidates, at ``fixed_s + per_token_s * tokens`` a step (:func:`step_cost`):
    the largest of ``shapes`` (largest first) of which ``seconds`` buy at least ``min_steps`` steps, and the largest
    of :func:`fallback_shapes` of which they buy ``fallback_steps`` (at most ``min_steps``); the first on a tie, the
    smallest of ``shapes`` when neither exists. So a budget that grows never gets a smaller step: without the
    fallback's claim a budget just large enough to buy ``min_steps`` of the smallest step would trade a fallback
    step's sequences for steps of one."""
    def buys(shape, steps):
        return seconds >= steps * step_price(shape, fixed_s, per_token_s)

    chosen = next((shape for shape in shapes if buys(shape, min_steps)), None)
    fallback = next((shape for shape in fallback_shapes(shapes) if buys(shape, min(fallback_steps, min_steps))), None)
    if fallback is not None and (chosen is None or fallback[0] * fallback[1] > chosen[0] * chosen[1]):
        return fallback
    return chosen if chosen is not None else shapes[-1]


def plan_for_budget(student, teacher, plan, seconds: float, blockwise_share: float | None = None,
                    fit_batch: bool = False, fit_seq_len: bool = False):
    """``(plan, budget_plan)``: ``plan`` with its steps sized to ``seconds`` on this machine (measured now) and its
    end-to-end stage's deadline ``seconds`` from now (the stage re-sizes itself from its own step times).

    ``fit_batch`` / ``fit_seq_len`` (an end-to-end-only plan): when the budget buys fewer than :data:`MIN_E2E_STEPS`
    steps of ``plan.batch_size`` x ``plan.seq_len`` tokens, the step shrinks - the batch first, down to one sequence,
    then the sequence, down to :data:`MIN_FIT_SEQ_LEN` tokens (:func:`step_shapes`) - to the largest that buys that
    many or the largest fallback step (4 x 64, 2 x 64) that buys :data:`FALLBACK_E2E_STEPS`, whichever is larger, else
    the smallest (:func:`fit_step_shape`).
    The two smallest steps are measured first (the cheapest to time; :func:`step_cost` prices the others from them),
    and the chosen one again when it is neither; when its own time does not buy :data:`MIN_E2E_STEPS` (a fallback
    step: :data:`FALLBACK_E2E_STEPS`), it and the steps before it are dropped and the rest priced again by the line
    through the smallest and that one (measured steps' noise can make the first line underprice a large step). After
    every measurement the steps are priced again by the line through the smallest and the largest measured step, and
    the step above the chosen one is timed as well when that line prices it within :data:`RECHECK_MARGIN` of what buys
    :data:`MIN_E2E_STEPS` (kept when its own time buys them). Every measurement counts in the budget. On short budgets
    more, smaller steps learn more (docs/benchmarks-quality-zen1.md and -zen4.md, validation split, an AVX2 CPU: 24
    steps of 4 x 256 tokens 236x the teacher, the same tokens in 96 steps of 1 x 256 70x; in the ~11 minutes those
    take, 160 of 1 x 128 52x, 220 of 1 x 64 44x, 280 of 1 x 32 47x; an AVX-512 CPU: 560 steps of 2 x 64 10.6x, 690 of
    1 x 64 12.9x).
    Build the training blocks with the returned plan's ``seq_len``."""
    from .attention import training_attention
    from .recipes import get_recipe, weight_format_of

    share = DEFAULT_BLOCKWISE_SHARE if blockwise_share is None else blockwise_share
    if "blockwise" not in plan.stages:
        share = 0.0
    elif "e2e" not in plan.stages:
        share = 1.0
    start = time.monotonic()
    cached = plan.cache_epochs if plan.cache_targets else 0

    progressive = get_recipe(plan.e2e_recipe(weight_format_of(student))).progressive

    def measure(batch_size, seq_len, before_s=0.0):
        with training_attention((student, teacher), plan.attn_implementation, plan.bf16):  # as run_stages trains
            times = measure_step_times(student, teacher, seq_len, batch_size, batch_size * plan.grad_accum,
                                       loss=plan.loss, bf16=plan.bf16, blockwise=share > 0, progressive=progressive)
        return dataclasses.replace(times, measured_s=before_s + times.measured_s)  # every measurement counts

    shapes = step_shapes(plan.batch_size, plan.seq_len, fit_batch, fit_seq_len) if share == 0.0 else []
    if len(shapes) > 1:
        # the two smallest steps first (the cheapest to time): a line through them prices every shape
        small, large = shapes[-1], shapes[-2]
        measured = {small: measure(*small)}
        measured[large] = measure(*large, measured[small].measured_s)
        spent = measured[large].measured_s
        candidates = list(shapes)
        while True:
            # the line through the smallest step and the largest measured one (the widest span: the truest per-token
            # part; a line through the two smallest alone can underprice a large step several times over)
            top = max(measured, key=lambda bs: bs[0] * bs[1])
            line = step_cost((small[0] * small[1], measured[small].e2e_step_s),
                             (top[0] * top[1], measured[top].e2e_step_s))
            shape = fit_step_shape(seconds - spent, candidates, *line)
            if shape in measured:
                # the line's choice is timed; the next larger step is timed too when the line prices it near what
                # buys MIN_E2E_STEPS (the line can overprice it as well as underprice it)
                at = candidates.index(shape)
                upper = candidates[at - 1] if at > 0 else None
                if (upper is None or upper in measured
                        or seconds - spent < MIN_E2E_STEPS * measured[shape].e2e_step_s
                        or RECHECK_MARGIN * (seconds - spent) < MIN_E2E_STEPS * step_price(upper, *line)):
                    break
                trial, wanted = upper, MIN_E2E_STEPS
            else:
                # chosen (unmeasured) for the MIN_E2E_STEPS its price buys, else as a fallback step for
                # FALLBACK_E2E_STEPS
                trial = shape
                buys_min = seconds - spent >= MIN_E2E_STEPS * step_price(shape, *line)
                wanted = MIN_E2E_STEPS if buys_min else FALLBACK_E2E_STEPS
            measured[trial] = measure(*trial, spent)
            spent = measured[trial].measured_s
            if seconds - spent < wanted * measured[trial].e2e_step_s:
                # its own time does not buy that many: it and the steps before it on the ladder are dropped
                candidates = candidates[candidates.index(trial) + 1:]
            # priced again by the line through the widest span measured, until the choice is a timed step
        times = dataclasses.replace(measured[shape], measured_s=spent)
        plan = dataclasses.replace(plan, batch_size=shape[0], seq_len=shape[1])
    else:
        times = measure(plan.batch_size, plan.seq_len)
    budget = plan_budget(seconds, times, share, plan.batch_size, cached_epochs=cached)
    sized = dataclasses.replace(plan, blockwise_steps=budget.blockwise_steps, e2e_steps=budget.e2e_steps,
                                calibration_sequences=budget.calibration_sequences or plan.calibration_sequences,
                                deadline=start + seconds)
    return sized, budget
