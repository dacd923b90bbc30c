"""benchmarks/quality.py turns its command line into the plan a row trains with: the loss terms it was asked for,
and none that a row's teacher targets cannot give (cached rows keep no hidden states or attention projections); and
it records the code paths that ran, not only the CPU's class."""

import json
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
import quality  # noqa: E402

from hf_onebit.training.losses import DEFAULT_HIDDEN_WEIGHT  # noqa: E402


@pytest.fixture
def parse(monkeypatch):
    """``quality.main`` on a command line, with its row not run: returns the parsed arguments."""
    parsed = {}

    def capture(row, args):
        parsed["args"] = args
        return {"row": row}

    monkeypatch.setattr(quality, "run_row", capture)

    def run(*argv):
        quality.main(["--row", "today", "--no-bf16", *argv])
        return parsed["args"]

    return run


def test_hidden_weight_reaches_the_loss_of_a_live_teacher_row(parse):
    args = parse("--hidden-weight", "10")
    assert quality.plan_for("today", args).loss.hidden_weight == 10.0
    assert quality.plan_for("blockwise", args).loss.hidden_weight == 10.0


def test_without_the_option_the_library_default_stays(parse):
    args = parse()
    assert quality.plan_for("today", args).loss.hidden_weight == DEFAULT_HIDDEN_WEIGHT


def test_adam_betas_reach_the_plan_and_default_to_the_library(parse):
    from hf_onebit.training.optim import DEFAULT_BETAS

    plan = quality.plan_for("today", parse("--adam-beta1", "0.7"))  # not the default: the option must act
    assert (plan.adam_beta1, plan.adam_beta2) == (0.7, DEFAULT_BETAS[1])
    plan = quality.plan_for("blockwise", parse("--adam-beta2", "0.98"))
    assert (plan.adam_beta1, plan.adam_beta2) == (DEFAULT_BETAS[0], 0.98)
    plan = quality.plan_for("today", parse())
    assert (plan.adam_beta1, plan.adam_beta2) == DEFAULT_BETAS


@pytest.mark.parametrize("row", ["today-cached", "all", "ternary-all"])
def test_cached_target_rows_drop_the_terms_their_targets_lack(parse, row):
    args = parse("--hidden-weight", "10", "--attention-weight", "1")
    loss = quality.plan_for(row, args).loss
    assert (loss.hidden_weight, loss.attention_weight) == (0.0, 0.0)
    assert quality.plan_for(row, args).cache_targets == 64


def test_machine_names_the_cpu_class_when_no_code_path_is_capped(monkeypatch):
    for name in ("ONEDNN_MAX_CPU_ISA", "HF_ONEBIT_CPU_ISA"):
        monkeypatch.delenv(name, raising=False)
    if "ATEN_CPU_CAPABILITY" in os.environ:
        pytest.skip("this process runs with ATEN_CPU_CAPABILITY set")
    info = quality.machine()
    assert info["code"]["capped"] == ""
    assert "running" not in info["isa"]


def test_machine_names_the_code_that_ran_when_the_environment_caps_it():
    """A figure measured with every code path capped at AVX2 must not be recorded as the CPU's own class."""
    from hf_onebit.ops.cpu.binding import supported_isas

    if "avx2" not in supported_isas():
        pytest.skip("the CPU kernels have no AVX2 variant on this CPU")
    env = dict(os.environ, ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2", HF_ONEBIT_CPU_ISA="avx2")
    code = ("import json, sys; sys.path.insert(0, 'benchmarks'); import quality; "
            "print(json.dumps(quality.machine()))")
    root = os.path.join(os.path.dirname(__file__), "..", "..")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, check=True)
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["code"] == {"torch": "AVX2", "onednn_max": "AVX2", "hf_onebit": "avx2", "capped": "AVX2"}
    assert info["isa"].endswith("CPU running AVX2 code")


def test_two_rows_of_one_name_and_budget_get_their_own_bars_in_the_plot():
    """The plot's bars are labelled by row, budget and end-to-end step: two runs of ``today`` at 15 minutes on
    different steps are two bars (matplotlib draws bars of one label on top of each other)."""
    rows = [{"row": "today", "budget_s": 900.0, "plan": {"batch_size": b, "seq_len": 64}} for b in (1, 4)]
    assert [quality._plot_label(r) for r in rows] == ["today (15 min, 1 x 64)", "today (15 min, 4 x 64)"]
    assert quality._plot_label({"row": "teacher"}) == "teacher"
    assert quality._plot_label({"row": "today", "budget_s": 3600.0}) == "today (60 min)"  # no plan recorded
