"""A time-budgeted run re-sizes its step count to its deadline from its own step times (training/deadline.py)."""

import math

import pytest
import torch
from transformers import TrainerControl, TrainerState

from hf_onebit.training.deadline import DeadlineCallback, StepCount, cosine_schedule


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _run(callback, clock, step_seconds, planned):
    """Drive the callback as the Trainer does: one on_step_end per optimizer step until max_steps."""
    state = TrainerState()
    state.max_steps = planned
    while state.global_step < state.max_steps:
        clock.now += step_seconds[min(state.global_step, len(step_seconds) - 1)]
        state.global_step += 1
        if callback.on_step_end(None, state, TrainerControl()).should_training_stop:
            break
    return state


def test_a_run_faster_than_planned_grows_to_its_deadline():
    # planned 20 steps of 5 s for a 100 s budget; the run's first two steps take 5 s, then 2.5 s
    clock, count = Clock(), StepCount(20)
    cb = DeadlineCallback(deadline=100.0, count=count, max_steps=1000, clock=clock)
    state = _run(cb, clock, [5.0, 5.0, 2.5], planned=20)
    assert count.total == state.max_steps == state.global_step
    # the first re-plan (at step 4) sees 2.5 s steps and 85 s left: 4 + 34 steps; the later ones (25 %, 50 %, 75 %,
    # 90 % of 38) agree
    assert [(s, round(p, 3), t) for s, p, t in cb.replans] == [(4, 2.5, 38), (10, 2.5, 38), (19, 2.5, 38),
                                                               (29, 2.5, 38), (35, 2.5, 38)]
    assert clock.now <= 100.0 < clock.now + 2.5  # ends at the deadline, not a step later


def test_a_run_whose_steps_slow_down_late_still_ends_at_its_deadline():
    # 2.5 s steps until step 20, then 4 s: the plan of the early points (38 steps) would end at 127 s
    clock, count = Clock(), StepCount(20)
    cb = DeadlineCallback(deadline=100.0, count=count, max_steps=1000, clock=clock)
    state = _run(cb, clock, [5.0, 5.0] + [2.5] * 18 + [4.0], planned=20)
    assert clock.now <= 100.0 < clock.now + 4.0
    assert state.global_step == count.total == 31
    # each re-plan times the steps since the previous one: the 75 % point sees the slow steps
    assert [(s, round(p, 2)) for s, p, _ in cb.replans][3:] == [(29, 3.85), (30, 4.0)]


def test_a_slower_run_shrinks_and_the_count_stays_within_the_data():
    clock, count = Clock(), StepCount(40)
    cb = DeadlineCallback(deadline=100.0, count=count, max_steps=1000, clock=clock)
    state = _run(cb, clock, [4.0], planned=40)
    assert state.global_step == 25 and clock.now == 100.0
    clock2, count2 = Clock(), StepCount(20)
    capped = DeadlineCallback(deadline=1000.0, count=count2, max_steps=30, clock=clock2)
    assert _run(capped, clock2, [1.0], planned=20).global_step == 30 == count2.total


def test_a_run_past_its_deadline_stops_at_the_next_step():
    clock, count = Clock(), StepCount(50)
    cb = DeadlineCallback(deadline=10.0, count=count, max_steps=1000, clock=clock)
    state = _run(cb, clock, [4.0], planned=50)
    assert state.global_step == 4  # the first re-plan point; nothing fits any more


def test_the_progress_bar_shows_the_resized_count():
    from transformers import ProgressCallback, TrainingArguments

    progress = ProgressCallback()
    state = TrainerState()
    state.max_steps = 20
    progress.on_train_begin(TrainingArguments(output_dir="unused", report_to=[]), state, TrainerControl())
    clock, count = Clock(), StepCount(20)
    cb = DeadlineCallback(deadline=100.0, count=count, max_steps=1000, clock=clock, progress=progress)
    _run(cb, clock, [5.0, 5.0, 2.5], planned=20)
    assert progress.training_bar.total == 38 == count.total
    progress.training_bar.close()
    clock2 = Clock()  # a ProgressCallback without a bar (before training, tqdm off): nothing to update, no error
    assert _run(DeadlineCallback(deadline=100.0, count=StepCount(40), max_steps=1000, clock=clock2,
                                 progress=ProgressCallback()), clock2, [4.0], planned=40).global_step == 25


def test_cosine_schedule_follows_the_step_count():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    count = StepCount(10)
    sched = cosine_schedule(opt, warmup_steps=2, count=count, min_lr_rate=0.1)
    factor = sched.lr_lambdas[0]
    assert [factor(0), factor(1), factor(2)] == [0.0, 0.5, 1.0]
    assert factor(10) == pytest.approx(0.1) and factor(6) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))
    count.total = 18
    assert factor(10) == pytest.approx(0.1 + 0.9 * 0.5) and factor(18) == pytest.approx(0.1) == factor(30)


@pytest.mark.parametrize("bad", [{"replan_at": (0.0,)}, {"replan_at": (1.5,)}])
def test_deadline_callback_rejects_bad_settings(bad):
    with pytest.raises(ValueError, match="replan_at"):
        DeadlineCallback(deadline=1.0, count=StepCount(5), max_steps=5, **bad)
    with pytest.raises(ValueError, match="total: got 0"):
        StepCount(0)


def test_pipeline_with_a_deadline_runs_the_steps_that_fit(tmp_path):
    """The tiny model's steps take milliseconds: a deadline ten minutes away lets the end-to-end stage grow from its
    planned 8 steps to all the data holds (no timing enters the assertions)."""
    import time

    import hf_onebit
    from transformers import AutoModelForCausalLM

    from distill_utils import tiny_teacher_dir
    from hf_onebit.training.data import TokenBlocks
    from hf_onebit.training.pipeline import DistillPlan, run_stages

    teacher_dir = tiny_teacher_dir(str(tmp_path))
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir)
    student = AutoModelForCausalLM.from_pretrained(teacher_dir,
                                                   quantization_config=hf_onebit.OneBitConfig(training=True))
    data = TokenBlocks(torch.randint(teacher.config.vocab_size, (40, 16), generator=torch.Generator().manual_seed(0)))
    plan = DistillPlan(e2e_steps=8, batch_size=2, seq_len=16, deadline=time.monotonic() + 600.0)
    summary = run_stages(student, teacher, data, plan, str(tmp_path / "run"), progress=False, log=lambda *a: None)
    e2e = summary["e2e"]
    assert e2e["planned_steps"] == 8
    assert e2e["steps"] == e2e["replans"][-1][2] == 20  # 40 sequences of batch 2: one epoch holds 20 steps
    assert e2e["tokens"] == e2e["steps"] * 2 * 16
    lrs = [float(h["learning_rate"]) for h in e2e["log"]]  # one entry per step
    assert lrs[7] > 0.5 * max(lrs)  # at the planned end (step 8) the schedule has not decayed: it follows the new count
    assert lrs[-1] < 0.1 * max(lrs)
    phases = [float(h["phase"]) for h in e2e["log"]]
    assert phases[7] < 10 <= phases[-2]  # the progressive phases stretch over the new count too
