"""Progressive schedule, binarizers and recipes: values, exact derivatives, and packed == hard-sign latent."""

import math

import pytest
import torch
import torch.nn as nn

from hf_onebit import OneBitConfig, OneBitLinear
from hf_onebit.training import ProgressiveSchedule, Temperature, apply_recipe_, finalize_, get_recipe, progressive_sign
from hf_onebit.training.binarizers import ProgressiveBinarizer, row_absmean
from hf_onebit.training.recipes import stage_of, start_main_stage_


def test_paper_schedule_values():
    s = ProgressiveSchedule()
    assert s.temperature(1) == pytest.approx(0.3199, abs=1e-3)
    assert s.temperature(2) == pytest.approx(0.7185, abs=1e-3)
    assert s.temperature(10) == pytest.approx(10.4, abs=0.05)
    assert s.temperature(20) == pytest.approx(104.6, abs=0.1)
    assert ProgressiveSchedule(t_end=50.0).temperature(20) == pytest.approx(50.0)


def test_phase_mapping_covers_every_phase_once_in_order():
    s = ProgressiveSchedule(phases=4, init_steps=3)
    phases = [s.phase(i, 11) for i in range(11)]
    assert phases[:3] == [0, 0, 0] and [s.stage(i) for i in range(4)] == ["init"] * 3 + ["main"]
    assert phases[3:] == sorted(phases[3:]) and set(phases[3:]) == {1, 2, 3, 4}
    assert s.is_last_phase(10, 11) and not s.is_last_phase(8, 11)
    with pytest.raises(ValueError, match="init_steps=3"):
        s.phase(0, 3)


@pytest.mark.parametrize("bad", [{"phases": 0}, {"rate": -1.0}, {"init_steps": -2}, {"t_end": 0}])
def test_schedule_rejects_bad_values(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        ProgressiveSchedule(**bad)


def test_progressive_sign_exact_derivative_and_limits():
    w = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    s = row_absmean(w)
    for t in (0.3, 3.0, 40.0):
        assert torch.autograd.gradcheck(lambda x: progressive_sign(x, t, s), (w,))
        y = progressive_sign(w, t, s)
        (g,) = torch.autograd.grad(y.sum(), w)
        expected = t * (1 - torch.tanh(t * w / s) ** 2) / math.tanh(t)
        torch.testing.assert_close(g, expected.detach())
    small = progressive_sign(w, 1e-3, s)
    torch.testing.assert_close(small, w.detach(), rtol=1e-3, atol=1e-5)  # t -> 0: the identity
    hard = progressive_sign(w, math.inf, s)
    torch.testing.assert_close(hard, torch.where(w >= 0, 1.0, -1.0).double() * s)


def _layer(seed=0, out=13, inp=21, scale_dtype="float32"):
    torch.manual_seed(seed)
    linear = nn.Linear(inp, out, bias=True)
    return OneBitLinear.from_linear(linear, OneBitConfig(training=True, scale_dtype=scale_dtype, act_bits=0))


class _Wrap(nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x)


def _perturb(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p) * p.abs().mean())


@pytest.mark.parametrize("recipe", [
    {"recipe": "progressive"},
    {"recipe": "progressive", "dual_scaling": False},
    {"recipe": "progressive", "binary_aware_init": False},
    {"recipe": "progressive", "init_steps": 0},
    {"recipe": "onebit"},
])
def test_packed_equals_hard_sign_latent(recipe):
    model = _Wrap(_layer())
    r = get_recipe(**recipe)
    temp = apply_recipe_(model, r)
    if r.progressive and stage_of(model) == "init":
        _perturb(model)  # a learned S_t
        start_main_stage_(model, r, temp)
    temp.t = 7.0
    _perturb(model)  # trained latent weights and scales
    x = torch.randn(6, 21)
    temp.t = math.inf
    with torch.no_grad():
        hard = model(x)
        finalize_(model)
        after = model(x)
        torch.testing.assert_close(after, hard, rtol=1e-5, atol=1e-5)  # finalize keeps the function
        model.layer.pack_()
        assert model.layer.weight.dtype == torch.uint8
        torch.testing.assert_close(model(x), hard, rtol=1e-5, atol=1e-5)


def test_binary_aware_init_fold_keeps_function():
    model = _Wrap(_layer(seed=1))
    r = get_recipe("progressive", init_steps=5)
    temp = apply_recipe_(model, r)
    assert stage_of(model) == "init"
    with torch.no_grad():
        model.layer.scale_in.copy_(torch.rand(21) + 0.5)  # a learned S_t
    x = torch.randn(4, 21)
    with torch.no_grad():
        before = model(x)
        start_main_stage_(model, r, temp)
        temp.t = math.inf
        torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-6)
    assert isinstance(model.layer.binarizer, ProgressiveBinarizer)


def test_progressive_start_is_near_identity():
    """At small t the dual-scaled progressive layer is close to the dense layer it came from."""
    torch.manual_seed(0)
    linear = nn.Linear(64, 32, bias=False)
    model = _Wrap(OneBitLinear.from_linear(linear, OneBitConfig(training=True, act_bits=0)))
    temp = apply_recipe_(model, get_recipe("progressive", init_steps=0))
    temp.t = 0.05
    x = torch.randn(8, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), linear(x), rtol=0.02, atol=2e-3)


def test_recipe_errors_name_the_field():
    with pytest.raises(ValueError, match="recipe"):
        get_recipe("bitnet-b2")
    with pytest.raises(ValueError, match="unknown field"):
        get_recipe("progressive", dual_scale=True)
    with pytest.raises(ValueError, match="OneBitConfig\\(training=True\\)"):
        apply_recipe_(nn.Linear(3, 3), get_recipe())
