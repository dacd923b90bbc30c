"""Ternary (BitNet b1.58) distillation: the smooth ternary step, progressive ternarisation (the default) and the
bitnet recipe in the stock Trainer on a tiny LLaMA (seconds each)."""

import copy
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, Trainer

from distill_utils import load_pair, tiny_teacher_dir, token_data, train_args
from hf_onebit.nn.linear import OneBitLinear, hard_ternary
from hf_onebit.training import OneBitDistillationCallback, finalize_, get_recipe, onebit_optimizer
from hf_onebit.training.binarizers import (
    BinaryAwareInitBinarizer,
    ProgressiveBinarizer,
    Temperature,
    progressive_ternary,
    row_absmean,
)


def test_progressive_ternary_limits_and_exact_gradient():
    torch.manual_seed(0)
    w = torch.randn(5, 37, dtype=torch.float64)
    s = row_absmean(w)
    # t -> 0: the identity (the float model); t -> inf: s * absmean-ternary (BitNet b1.58's step), G(1, t) = 1.
    torch.testing.assert_close(progressive_ternary(w, 1e-4, s), w, rtol=0, atol=1e-6)
    torch.testing.assert_close(progressive_ternary(w, 1e4, s), hard_ternary(w) * s, rtol=0, atol=1e-6)
    torch.testing.assert_close(progressive_ternary(w, math.inf, s), hard_ternary(w) * s)
    one = torch.ones(1, 1, dtype=torch.float64)
    for t in (0.3, 3.0, 30.0):
        assert progressive_ternary(one, t).item() == pytest.approx(1.0)
    # Forward and backward are the same function: the analytic gradient equals finite differences.
    assert torch.autograd.gradcheck(lambda x: progressive_ternary(x, 2.5, s), (w.clone().requires_grad_(),))
    # Three levels appear as t grows: values near 0 for |u| < 1/2, near +-1 beyond.
    mid = progressive_ternary(torch.tensor([[0.1, 0.9, -0.9]], dtype=torch.float64), 40.0)
    torch.testing.assert_close(mid, torch.tensor([[0.0, 1.0, -1.0]], dtype=torch.float64), rtol=0, atol=1e-3)
    with pytest.raises(ValueError, match="t: got"):
        progressive_ternary(w, 0.0)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    return tiny_teacher_dir(str(tmp_path_factory.mktemp("distill_ternary")))


def _kl(student, teacher, x) -> float:
    student.eval()
    with torch.no_grad():
        ls = torch.log_softmax(student(x).logits.float(), -1)
        lt = torch.log_softmax(teacher(x).logits.float(), -1)
    return float((lt.exp() * (lt - ls)).sum(-1).mean())


def test_default_recipe_follows_the_weight_format(teacher_dir):
    student, teacher = load_pair(teacher_dir, weight_format="ternary")
    cb = OneBitDistillationCallback(teacher)
    cb.prepare(student)
    # Both formats default to the progressive recipe: a ternary student starts with binary-aware init on its own
    # hard quantizer (then the smooth ternary step), not BitNet's straight-through one.
    assert cb.recipe.name == "progressive" and cb.recipe.cooldown_at is None
    layers = [m for m in student.modules() if isinstance(m, OneBitLinear)]
    assert layers and all(isinstance(m.binarizer, BinaryAwareInitBinarizer) and m.binarizer._quantize is hard_ternary
                          for m in layers)
    bitnet, _ = load_pair(teacher_dir, weight_format="ternary")
    cb_bitnet = OneBitDistillationCallback(teacher, recipe="bitnet")
    cb_bitnet.prepare(bitnet)
    assert cb_bitnet.recipe.cooldown_at == 0.5
    assert all(m.binarizer is hard_ternary for m in bitnet.modules() if isinstance(m, OneBitLinear))
    binary, _ = load_pair(teacher_dir)
    cb2 = OneBitDistillationCallback(teacher)
    cb2.prepare(binary)
    assert cb2.recipe.name == "progressive"
    with pytest.raises(ValueError, match="'onebit' .* binary"):
        OneBitDistillationCallback(teacher, recipe="onebit").prepare(student)


@pytest.mark.parametrize("recipe,overrides", [
    ("bitnet", {}),
    ("progressive", {"init_steps": 3, "phases": 4}),
    ("progressive", {"init_steps": 0, "phases": 4, "dual_scaling": False}),
])
def test_ternary_distillation_improves_and_packs_exactly(teacher_dir, tmp_path, recipe, overrides):
    student, teacher = load_pair(teacher_dir, weight_format="ternary", scale_dtype="float32")
    x = token_data(8, 16, seed=7).blocks
    baseline = copy.deepcopy(student)
    cb0 = OneBitDistillationCallback(teacher, recipe=recipe, **overrides)
    cb0.prepare(baseline)
    finalize_(baseline)
    kl_before = _kl(baseline, teacher, x)

    cb = OneBitDistillationCallback(teacher, recipe=recipe, plot=False, **overrides)
    lrs = []

    class LrProbe(torch.optim.AdamW):
        def step(self, closure=None):
            lrs.append(self.param_groups[0]["lr"])
            return super().step(closure)

    opt = LrProbe(onebit_optimizer(student, lr=3e-3, scale_lr=3e-3).param_groups)
    trainer = Trainer(model=student, args=train_args(str(tmp_path / "out"), 24), train_dataset=token_data(64, 16),
                      callbacks=[cb], optimizers=(opt, None))
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert sum(h["sign_flips"] for h in logs) > 0  # ternary codes (-1 / 0 / +1) change during training
    if recipe == "bitnet":
        # Two-stage learning rate: the cool-down factor applies from half the run on (constant schedule here).
        assert lrs[:12] == [pytest.approx(3e-3)] * 12 and lrs[12:] == [pytest.approx(3e-3 * 0.25)] * 12
        assert all(g["weight_decay"] == 0.0 for g in opt.param_groups)
    kl_after = _kl(student, teacher, x)
    assert kl_after < 0.85 * kl_before, (kl_before, kl_after)

    # After training every layer uses the hard ternary step; the packed checkpoint has the same function.
    layers = [m for m in student.modules() if isinstance(m, OneBitLinear)]
    assert all(m.binarizer is hard_ternary and m.weight_format == "ternary" for m in layers)
    with torch.no_grad():
        expected = student(x).logits
    student.save_pretrained(tmp_path / "packed")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "packed")
    packed = [m for m in reloaded.modules() if isinstance(m, OneBitLinear)]
    assert all(m.weight.dtype == torch.uint8 and m.weight_format == "ternary" for m in packed)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x).logits, expected, rtol=1e-4, atol=1e-4)


def test_progressive_ternary_binarizer_repr_and_recipe_validation():
    b = ProgressiveBinarizer(Temperature(2.0), weight_format="ternary")
    assert "ternary" in repr(b)
    with pytest.raises(ValueError, match="cooldown_at"):
        get_recipe("bitnet", cooldown_at=1.5)
    with pytest.raises(ValueError, match="recipe: got 'ternary'"):
        get_recipe("ternary")
