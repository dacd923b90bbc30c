"""The attention implementation the models train on (``DistillPlan.attn_implementation``): eager for bf16 on a CPU by
default, held exactly while the stages (and the budget's step timing) run, each model's own afterwards, and the same
function either way."""

import pytest
import torch
from transformers import AutoModelForCausalLM

import hf_onebit
from distill_utils import tiny_teacher_dir
from hf_onebit.training.attention import CHOICES, resolve, training_attention
from hf_onebit.training.data import TokenBlocks
from hf_onebit.training.pipeline import DistillPlan, run_stages


def _models(tmp_path):
    path = tiny_teacher_dir(str(tmp_path))
    teacher = AutoModelForCausalLM.from_pretrained(path)
    student = AutoModelForCausalLM.from_pretrained(path, quantization_config=hf_onebit.OneBitConfig(training=True))
    return student, teacher


def _record_attention(model, seen):
    """A forward pre-hook that records the implementation each forward of ``model`` runs on."""
    return model.register_forward_pre_hook(lambda module, args: seen.append(module.config._attn_implementation))


@pytest.mark.parametrize("choice, device, bf16, expected", [
    ("auto", "cpu", True, "eager"), ("auto", "cpu", False, None), ("auto", "cuda", True, None),
    ("sdpa", "cpu", True, "sdpa"), ("eager", "cuda", False, "eager"), ("model", "cpu", True, None),
])
def test_auto_is_eager_only_for_bf16_on_a_cpu(choice, device, bf16, expected):
    assert resolve(choice, device, bf16) == expected


@pytest.mark.parametrize("bad", ["flash", "", None, "EAGER"])
def test_a_bad_choice_is_refused_with_the_field_and_the_allowed_values(bad):
    with pytest.raises(ValueError, match=r"attn_implementation: got .*allowed: one of \('auto'"):
        DistillPlan(attn_implementation=bad)
    with pytest.raises(ValueError, match="attn_implementation"):
        resolve(bad, "cpu", True)
    assert set(CHOICES) == {"auto", "sdpa", "eager", "model"}


def test_the_choice_holds_inside_and_each_models_own_comes_back_even_after_an_error(tmp_path):
    student, teacher = _models(tmp_path)
    teacher.set_attn_implementation("eager")  # the two start different; each gets its own back
    with training_attention((student, None, teacher), "sdpa", bf16=False) as name:
        assert name == "sdpa"
        assert student.config._attn_implementation == teacher.config._attn_implementation == "sdpa"
    assert (student.config._attn_implementation, teacher.config._attn_implementation) == ("onebit_sdpa", "eager")
    with pytest.raises(RuntimeError, match="boom"):
        with training_attention((student, teacher), "auto", bf16=True):
            assert student.config._attn_implementation == teacher.config._attn_implementation == "eager"
            raise RuntimeError("boom")
    assert (student.config._attn_implementation, teacher.config._attn_implementation) == ("onebit_sdpa", "eager")
    with training_attention((student, teacher), "model", bf16=True) as name:  # nothing changes
        assert name is None and teacher.config._attn_implementation == "eager"


def test_eager_and_sdpa_compute_the_same_function(tmp_path):
    student, teacher = _models(tmp_path)
    ids = torch.randint(teacher.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding: the masked path as well as the causal one
    out = {}
    for choice in ("sdpa", "eager"):
        with training_attention((student, teacher), choice, bf16=False), torch.no_grad():
            out[choice] = [m(input_ids=ids, attention_mask=mask).logits[mask.bool()] for m in (student, teacher)]
    for a, b in zip(out["sdpa"], out["eager"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("choice, bf16, during, recorded", [("auto", True, ("eager", "eager"), "eager"),
                                                             ("auto", False, ("onebit_sdpa", "sdpa"), "model"),
                                                             ("eager", False, ("eager", "eager"), "eager")])
def test_run_stages_trains_both_models_on_the_choice_and_gives_theirs_back(tmp_path, choice, bf16, during, recorded):
    student, teacher = _models(tmp_path)
    seen = {"student": [], "teacher": []}
    hooks = [_record_attention(student, seen["student"]), _record_attention(teacher, seen["teacher"])]
    data = TokenBlocks(torch.randint(teacher.config.vocab_size, (8, 16), generator=torch.Generator().manual_seed(0)))
    plan = DistillPlan(e2e_steps=2, batch_size=2, seq_len=16, bf16=bf16, attn_implementation=choice)
    summary = run_stages(student, teacher, data, plan, str(tmp_path / "run"), progress=False, log=lambda *a: None)
    for hook in hooks:
        hook.remove()
    assert summary["e2e"]["steps"] == 2
    assert summary["attn_implementation"] == recorded  # "model": each model kept its own
    assert seen["student"] and set(seen["student"]) == {during[0]}
    assert seen["teacher"] and set(seen["teacher"]) == {during[1]}
    # each model's own back: the 1-bit student's is onebit_sdpa (hf_onebit's loader sets it), the teacher's sdpa
    assert (student.config._attn_implementation, teacher.config._attn_implementation) == ("onebit_sdpa", "sdpa")


def test_the_budget_times_the_step_on_the_attention_the_run_will_use(tmp_path, monkeypatch):
    from hf_onebit.training import budget

    student, teacher = _models(tmp_path)
    seen = []

    def fake_measure(student, teacher, seq_len, batch_size, *args, **kwargs):
        seen.append(student.config._attn_implementation)
        return budget.StepTimes(0.0, 0.0, 0.01, 2, 0.0, teacher_forward_s=0.0)

    monkeypatch.setattr(budget, "measure_step_times", fake_measure)
    budget.plan_for_budget(student, teacher, DistillPlan(bf16=True), 60.0)
    assert seen == ["eager"] and student.config._attn_implementation == "onebit_sdpa"
    seen.clear()
    budget.plan_for_budget(student, teacher, DistillPlan(bf16=True, attn_implementation="model"), 60.0)
    assert seen == ["onebit_sdpa"]


def test_the_cli_passes_the_choice_to_the_plan():
    from hf_onebit.cli import build_parser
    from hf_onebit.commands.distill import plan_from_args

    parse = build_parser().parse_args
    assert plan_from_args(parse(["distill", "--teacher", "t", "--out", "o"])).attn_implementation == "auto"
    plan = plan_from_args(parse(["distill", "--teacher", "t", "--out", "o", "--attn-implementation", "sdpa"]))
    assert plan.attn_implementation == "sdpa"
    with pytest.raises(SystemExit):  # argparse names the option and the choices
        parse(["distill", "--teacher", "t", "--out", "o", "--attn-implementation", "flash"])


def test_the_step_benchmark_times_the_step_on_sdpa_beside_the_default(capsys):
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "distill_overhead.py")
    spec = importlib.util.spec_from_file_location("distill_overhead", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--tiny", "--reps", "1", "--batch-size", "2", "--seq-len", "16", "--bf16", "--sdpa"])
    out = capsys.readouterr().out
    assert "| distillation, sdpa attention" in out
    assert "distillation / distillation on sdpa attention = " in out


@pytest.mark.parametrize("choice", ["eager", "sdpa"])
def test_a_block_run_alone_on_either_attention_is_the_models_causal_block(tmp_path, choice):
    """The block-wise stage runs blocks alone with the keyword arguments the model passed them (its attention mask):
    captured under the same choice, a block computes what it computes inside the model, and stays causal."""
    from hf_onebit.training.blockwise import capture_block_inputs, decoder_layers, run_block

    _, teacher = _models(tmp_path)
    ids = torch.randint(teacher.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % teacher.config.vocab_size
    layer = decoder_layers(teacher)[0]
    with training_attention((teacher,), choice, bf16=False), torch.no_grad():
        hidden, kwargs = capture_block_inputs(teacher, ids)
        out = run_block(layer, hidden, kwargs)
        inside = teacher(input_ids=ids, output_hidden_states=True).hidden_states[1]
        hidden2, kwargs2 = capture_block_inputs(teacher, changed)
        out2 = run_block(layer, hidden2, kwargs2)
    torch.testing.assert_close(out, inside, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[:, :-1], out2[:, :-1])  # a later token does not reach earlier positions
    assert not torch.allclose(out[:, -1], out2[:, -1])
