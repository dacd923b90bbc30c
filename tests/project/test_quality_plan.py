"""benchmarks/quality.py turns its command line into the plan a row trains with: the loss terms it was asked for,
and none that a row's teacher targets cannot give (cached rows keep no hidden states or attention projections)."""

import os
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


@pytest.mark.parametrize("row", ["today-cached", "all", "ternary-all"])
def test_cached_target_rows_drop_the_terms_their_targets_lack(parse, row):
    args = parse("--hidden-weight", "10", "--attention-weight", "1")
    loss = quality.plan_for(row, args).loss
    assert (loss.hidden_weight, loss.attention_weight) == (0.0, 0.0)
    assert quality.plan_for(row, args).cache_targets == 64
