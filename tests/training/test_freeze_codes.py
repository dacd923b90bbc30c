"""Recipe.freeze_codes_at: the last part of a run trains the scale vectors, norms and embeddings on frozen codes."""

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, Trainer, TrainerCallback

from distill_utils import (StopAt, assert_resumed_like_uninterrupted, load_pair, tiny_teacher_dir, token_data,
                           train_args)
from hf_onebit.training import OneBitDistillationCallback, get_recipe, onebit_optimizer
from hf_onebit.training.binarizers import FrozenCodes, finalize_module_, freeze_codes_
from hf_onebit.training.callback import STATE_FILE
from hf_onebit.training.recipes import codes_frozen, latent_layers


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    return tiny_teacher_dir(str(tmp_path_factory.mktemp("freeze")))


@pytest.mark.parametrize("value", [0, 1, 1.5, -0.2, True, "0.5"])
def test_recipe_refuses_a_freeze_point_outside_the_run(value):
    with pytest.raises(ValueError, match=r"freeze_codes_at: got .*allowed: None or a fraction in \(0, 1\)"):
        get_recipe("progressive", freeze_codes_at=value)


def test_codes_frozen_at_is_a_fraction_of_the_run():
    recipe = get_recipe("progressive", freeze_codes_at=0.75)
    assert [recipe.codes_frozen_at(s, 8) for s in range(8)] == [False] * 6 + [True] * 2
    assert not get_recipe("progressive").codes_frozen_at(10**6, 10)


@pytest.mark.parametrize("weight_format", ["binary", "ternary"])
def test_frozen_layer_computes_its_packed_function_and_trains_only_its_scales(teacher_dir, weight_format):
    student, teacher = load_pair(teacher_dir, weight_format=weight_format)
    cb = OneBitDistillationCallback(teacher, recipe="progressive", init_steps=0)
    cb.prepare(student)
    cb.temperature.t = 8.0  # mid-run: the soft function differs from the hard one
    layer = student.model.layers[0].mlp.up_proj
    reference = copy.deepcopy(layer)
    finalize_module_(reference)  # the hard function with the row scale folded: what packing computes
    x = torch.randn(5, layer.in_features)
    with torch.no_grad():
        expected = reference(x)
        soft = layer(x)
    assert not torch.allclose(soft, expected, rtol=1e-3, atol=1e-3)
    freeze_codes_(layer, torch.float32)
    assert isinstance(layer.binarizer, FrozenCodes) and not layer.weight.requires_grad
    y = layer(x)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    y.square().sum().backward()
    assert layer.weight.grad is None
    assert layer.scale_in.grad is not None and layer.scale_out.grad is not None
    with pytest.raises(ValueError, match="FrozenCodes: the weight has shape"):
        layer.binarizer(torch.zeros(3, 3))


class _Watch(TrainerCallback):
    """Keeps a copy of one latent weight and one scale vector at every step's end."""

    def __init__(self, layer):
        self.layer, self.weights, self.scales = layer, [], []

    def on_step_end(self, args, state, control, **kwargs):
        self.weights.append(self.layer.weight.detach().clone())
        self.scales.append(self.layer.scale_out.detach().clone())


def _trainer(student, teacher, out, steps, freeze=0.5, **kwargs):
    cb = OneBitDistillationCallback(teacher, recipe="progressive", init_steps=1, phases=3, freeze_codes_at=freeze)
    args = train_args(out, steps, lr_scheduler_type="cosine", warmup_steps=2, **kwargs)
    watch = _Watch(student.model.layers[1].self_attn.o_proj)
    trainer = Trainer(model=student, args=args, train_dataset=token_data(48, 16), callbacks=[cb, watch],
                      optimizers=(onebit_optimizer(student, lr=3e-3), None))
    return trainer, cb, watch


def test_a_run_freezes_its_codes_half_way_and_its_packed_form_computes_the_trained_function(teacher_dir, tmp_path):
    student, teacher = load_pair(teacher_dir, scale_dtype="float32")  # (packed scales kept exact for the comparison)
    trainer, cb, watch = _trainer(student, teacher, str(tmp_path / "out"), 12)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["codes_frozen"] for h in logs] == [0.0] * 6 + [1.0] * 6  # steps 0-5 train the codes, 6-11 do not
    assert all(h["sign_flips"] == 0.0 for h in logs[6:])
    # from the step that froze them on, the latent weights stay where they were; the scales keep training
    for w in watch.weights[6:]:
        torch.testing.assert_close(w, watch.weights[5], rtol=0, atol=0)
    assert not torch.equal(watch.weights[5], watch.weights[4])
    assert not torch.equal(watch.scales[11], watch.scales[6])
    # after training: the hard quantizer again, weights trainable, nothing frozen left behind
    assert not codes_frozen(student)
    assert all(m.weight.requires_grad for _, m in latent_layers(student))
    x = token_data(4, 16, seed=9).blocks
    student.eval()
    with torch.no_grad():
        expected = student(x).logits
    student.save_pretrained(tmp_path / "packed")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "packed")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x).logits, expected, rtol=1e-4, atol=1e-4)


def test_a_run_resumed_after_the_freeze_matches_the_uninterrupted_one(teacher_dir, tmp_path):
    def run(out, stop=None, resume=None):
        student, teacher = load_pair(teacher_dir)
        trainer, cb, _ = _trainer(student, teacher, out, 12, save_strategy="steps", save_steps=8)
        if stop:
            trainer.add_callback(StopAt(stop))
        trainer.train(resume_from_checkpoint=resume)
        return trainer, student

    full, full_student = run(str(tmp_path / "full"))
    run(str(tmp_path / "cut"), stop=8)
    ckpt = tmp_path / "cut" / "checkpoint-8"
    assert json.load(open(ckpt / STATE_FILE))["codes_frozen_step"] == 6
    resumed, resumed_student = run(str(tmp_path / "cut"), resume=str(ckpt))
    assert_resumed_like_uninterrupted(full, full_student, resumed, resumed_student, last_losses=4)


def test_the_cli_passes_the_freeze_point_to_the_recipe_and_checks_it():
    from hf_onebit.cli import build_parser
    from hf_onebit.commands.distill import plan_from_args

    parse = build_parser().parse_args
    for recipe in (["--recipe", "progressive"], ["--recipe", "bitnet"], []):
        plan = plan_from_args(parse(["distill", "--teacher", "t", "--out", "o", "--freeze-codes-at", "0.75", *recipe]))
        assert plan.recipe_overrides["freeze_codes_at"] == 0.75
        assert get_recipe(plan.recipe or "progressive", **plan.recipe_overrides).freeze_codes_at == 0.75
    assert "freeze_codes_at" not in plan_from_args(parse(["distill", "--teacher", "t", "--out", "o"])).recipe_overrides
    for bad in ("1", "0", "-0.5"):
        with pytest.raises(ValueError, match=rf"--freeze-codes-at: got {float(bad):g}; allowed: a fraction in \(0, 1\)"):
            plan_from_args(parse(["distill", "--teacher", "t", "--out", "o", "--freeze-codes-at", bad]))
