"""Distillation inside the stock transformers.Trainer on tiny LLaMA models (seconds each)."""

import json
import math
import os

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, Trainer, TrainerCallback

from distill_utils import (StopAt, assert_resumed_like_uninterrupted, load_pair, tiny_teacher_dir, token_data,
                           train_args)
from hf_onebit.ops.cpu.fpenv import set_flush_denormal
from hf_onebit.training import DistillationLoss, OneBitDistillationCallback, TokenBlocks, onebit_optimizer
from hf_onebit.training.callback import STATE_FILE


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    return tiny_teacher_dir(str(tmp_path_factory.mktemp("distill")))


def _kl_to_teacher(student, teacher, data: TokenBlocks) -> float:
    student.eval()
    with torch.no_grad():
        x = data.blocks
        ls = torch.log_softmax(student(x).logits.float(), -1)
        lt = torch.log_softmax(teacher(x).logits.float(), -1)
        return float((lt.exp() * (lt - ls)).sum(-1).mean())


def _weight_tensors(folder):
    with safe_open(os.path.join(folder, "model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys() if k.endswith("q_proj.weight")}


@pytest.mark.parametrize("recipe", ["progressive", "onebit"])
def test_distillation_improves_the_packed_student_and_reloads(teacher_dir, tmp_path, recipe):
    student, teacher = load_pair(teacher_dir, scale_dtype="float32")
    held = token_data(8, 16, seed=123)
    cb = OneBitDistillationCallback(teacher, recipe=recipe, **({"init_steps": 4, "phases": 5} if recipe == "progressive" else {}))
    # Untrained baseline: the hard-sign function the student starts from (what packing it now would give).
    import copy

    from hf_onebit.training import finalize_

    baseline = copy.deepcopy(student)
    cb.prepare(baseline)
    finalize_(baseline)
    kl_before = _kl_to_teacher(baseline, teacher, held)
    cb._model = None  # the callback is re-prepared on the real student by the Trainer

    trainer = Trainer(model=student, args=train_args(str(tmp_path / "out"), 30), train_dataset=token_data(64, 16),
                      callbacks=[cb], optimizers=(onebit_optimizer(student, lr=3e-3, scale_lr=3e-3), None))
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert all(k in logs[-1] for k in ("distill_kl", "distill_hidden", "sign_flips", "clip_threshold"))
    if recipe == "progressive":
        assert logs[0]["stage"] == 0.0 and logs[-1]["t"] == pytest.approx(cb.recipe.schedule.temperature(5))
        assert sum(h["sign_flips"] for h in logs) > 0
    assert os.path.isfile(tmp_path / "out" / "distill_curves.png")

    kl_after = _kl_to_teacher(student, teacher, held)
    assert kl_after < 0.85 * kl_before, (kl_before, kl_after)

    x = held.blocks
    with torch.no_grad():
        expected = student(x).logits
    student.save_pretrained(tmp_path / "packed")
    assert all(t.dtype == torch.uint8 for t in _weight_tensors(tmp_path / "packed").values())
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "packed")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x).logits, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("with_labels", [True, False])
def test_gradient_accumulation_matches_one_big_batch(teacher_dir, tmp_path, with_labels):
    """batch 8 x 1 == batch 4 x 2 accumulation (SGD, so any loss-scaling error would show)."""

    class NoLabels(TokenBlocks):
        def __getitem__(self, i):
            item = super().__getitem__(i)
            item.pop("labels")
            return item

    data = (TokenBlocks if with_labels else NoLabels)(token_data(32, 16).blocks)
    results = []
    for bs, ga in ((8, 1), (4, 2)):
        student, teacher = load_pair(teacher_dir)
        # the plain hidden-state distance: the default dim-scaled one takes its medians over each micro-batch's rows
        cb = OneBitDistillationCallback(teacher, recipe="progressive", loss=DistillationLoss(hidden_metric="cosine"),
                                        init_steps=1, phases=2, adaptive_clip=False)
        args = train_args(str(tmp_path / f"ga{ga}"), 3, per_device_train_batch_size=bs, gradient_accumulation_steps=ga,
                          max_grad_norm=0.0)
        opt = torch.optim.SGD([p for p in student.parameters() if p.requires_grad], lr=0.05)
        trainer = Trainer(model=student, args=args, train_dataset=data, callbacks=[cb], optimizers=(opt, None))
        trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        results.append((losses, student.model.layers[0].mlp.up_proj.weight.detach().clone()))
    (loss_a, w_a), (loss_b, w_b) = results
    assert loss_a == pytest.approx(loss_b, rel=1e-4)
    torch.testing.assert_close(w_a, w_b, rtol=1e-4, atol=1e-6)


def _run(teacher_dir, out, steps, stop=None, resume=None):
    student, teacher = load_pair(teacher_dir)
    cb = OneBitDistillationCallback(teacher, recipe="progressive", init_steps=3, phases=3)
    args = train_args(out, steps, save_strategy="steps", save_steps=5, lr_scheduler_type="cosine", warmup_steps=2)
    callbacks = [cb] + ([StopAt(stop)] if stop else [])
    trainer = Trainer(model=student, args=args, train_dataset=token_data(48, 16), callbacks=callbacks,
                      optimizers=(onebit_optimizer(student, lr=2e-3), None))
    trainer.train(resume_from_checkpoint=resume)
    return trainer, student


def test_interrupted_and_resumed_run_matches_uninterrupted(teacher_dir, tmp_path):
    full, full_student = _run(teacher_dir, str(tmp_path / "full"), 12)
    _run(teacher_dir, str(tmp_path / "cut"), 12, stop=5)
    ckpt = tmp_path / "cut" / "checkpoint-5"
    # Trainer checkpoints hold the LATENT weights (float (out, in)) and the callback's state.
    weights = _weight_tensors(ckpt)
    assert all(t.dtype == torch.float32 and t.dim() == 2 and t.shape[1] == 48 for t in weights.values())
    assert json.load(open(ckpt / STATE_FILE))["recipe"]["name"] == "progressive"
    resumed, resumed_student = _run(teacher_dir, str(tmp_path / "cut"), 12, resume=str(ckpt))
    assert_resumed_like_uninterrupted(full, full_student, resumed, resumed_student, last_losses=7)


def test_loss_terms_and_weights():
    loss = DistillationLoss(kl_weight=1.0, hidden_weight=0.5, ce_weight=0.25, temperature=2.0)
    logits = torch.randn(2, 5, 11)
    hidden = tuple(torch.randn(2, 5, 7) for _ in range(3))
    ids = torch.randint(11, (2, 5))
    labels = ids.clone()
    labels[0, 3] = -100
    mask = loss.token_mask(ids, None, labels)
    assert mask.sum() == 7
    terms = loss.terms(logits, logits, mask, hidden, hidden, labels)
    assert terms["kl"].abs() < 1e-5 and terms["hidden"].abs() < 1e-6 and terms["ce"] > 0
    assert float(loss.combine(terms)) == pytest.approx(0.25 * float(terms["ce"]), rel=1e-4, abs=1e-5)
    with pytest.raises(ValueError, match="temperature"):
        DistillationLoss(temperature=0)


def test_callback_refuses_a_packed_student(teacher_dir):
    import hf_onebit  # noqa: F401

    from hf_onebit import OneBitConfig

    packed = AutoModelForCausalLM.from_pretrained(teacher_dir, quantization_config=OneBitConfig())
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir)
    cb = OneBitDistillationCallback(teacher)
    with pytest.raises(ValueError, match="training=True"):
        cb.prepare(packed)


def _flushes_denormals() -> bool:
    """Whether every thread of torch's pool flushes: a product large enough to be split over the threads, whose every
    element is the float32 denormal 1e-40, comes out all zeros."""
    return not bool((torch.full((1 << 20,), 1e-30) * 1e-10).any())


@pytest.mark.parametrize("flush", [True, False])
def test_denormals_flush_to_zero_during_training_only(teacher_dir, tmp_path, flush):
    """The callback turns flush-to-zero on for the run (the optimizer is ~10x slower on denormal moments) and off at
    the end; flush_denormals=False leaves the float behaviour alone."""
    student, teacher = load_pair(teacher_dir)
    seen = []

    class Probe(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            seen.append(_flushes_denormals())

    # every thread of the pool flushes (x86 and AArch64 with the kernel library; torch's call alone: one thread)
    supported = set_flush_denormal(True) == torch.get_num_threads()
    set_flush_denormal(False)
    assert not _flushes_denormals()
    cb = OneBitDistillationCallback(teacher, recipe="progressive", init_steps=1, plot=False, flush_denormals=flush)
    Trainer(model=student, args=train_args(str(tmp_path), 3), train_dataset=token_data(),
            callbacks=[cb, Probe()], optimizers=(onebit_optimizer(student), None)).train()
    assert seen == [flush and supported] * 3
    assert not _flushes_denormals()
    with pytest.raises(ValueError, match="flush_denormals: got 'yes'"):
        OneBitDistillationCallback(teacher, flush_denormals="yes")


def test_the_convenience_trainer_releases_the_callback_when_training_raises(teacher_dir, tmp_path):
    """A run that raises leaves no denormal flushing, heap setting or hook behind (the stock Trainer has no event for
    it; the test's own fixture would fail on flushing left on)."""
    from hf_onebit.training.trainer import OneBitDistillationTrainer

    student, teacher = load_pair(teacher_dir)
    supported = set_flush_denormal(True) == torch.get_num_threads()
    set_flush_denormal(False)
    seen = []

    class Boom(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            seen.append(_flushes_denormals())
            if state.global_step == 2:
                raise RuntimeError("boom at step 2")

    cb = OneBitDistillationCallback(teacher, recipe="progressive", init_steps=1, plot=False)
    trainer = OneBitDistillationTrainer(model=student, args=train_args(str(tmp_path), 4), train_dataset=token_data(),
                                        callbacks=[cb, Boom()])
    with pytest.raises(RuntimeError, match="boom at step 2"):
        trainer.train()
    assert seen == [supported] * 2  # on while it trained
    assert not _flushes_denormals()
    assert cb._heap is None and not cb._active and not student._forward_pre_hooks and not student._forward_hooks
