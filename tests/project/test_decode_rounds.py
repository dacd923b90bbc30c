"""benchmarks/decode.py --rounds: every row's worker runs once per round with the rows in rotation, and the table holds
each row's median (workers replaced by a fake here: no model is built)."""

import argparse
import itertools
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
import decode  # noqa: E402


def test_run_rounds_rotates_the_specs_and_takes_medians():
    calls = []
    rates = {"a": iter([10.0, 30.0, 20.0]), "b": iter([5.0, 7.0, 6.0])}

    def run(spec):
        calls.append(spec["name"])
        return {"tok_s": next(rates[spec["name"]]), "peak_rss": 100 + len(calls), "model_bytes": 1}

    merged = decode.run_rounds([{"name": "a"}, {"name": "b"}], 3, run=run)
    assert calls == ["a", "b", "a", "b", "a", "b"]  # one of each per round, not all of a's rounds first
    assert merged[0]["tok_s"] == 20.0 and merged[0]["rates"] == {"tok_s": [10.0, 30.0, 20.0]}
    assert merged[1]["tok_s"] == 6.0
    assert merged[0]["peak_rss"] == 105 and merged[1]["peak_rss"] == 106  # the largest of the rounds


def test_run_rounds_skips_failed_rounds_and_reports_a_row_that_always_failed():
    outcomes = {"ok": iter([{"tok_s_a0": 1.0, "tok_s_a8": 2.0}, {"error": "exit 1: boom"},
                            {"tok_s_a0": 3.0, "tok_s_a8": 4.0}]),
                "bad": iter([{"error": "first"}, {"error": "second"}, {"error": "third"}])}
    merged = decode.run_rounds([{"name": "ok"}, {"name": "bad"}], 3, run=lambda spec: next(outcomes[spec["name"]]))
    assert merged[0]["tok_s_a0"] == 2.0 and merged[0]["tok_s_a8"] == 3.0  # median of the two rounds that ran
    assert merged[0]["rates"] == {"tok_s_a0": [1.0, 3.0], "tok_s_a8": [2.0, 4.0]}
    assert merged[1] == {"error": "first"}


@pytest.mark.parametrize("rounds", [0, -1, 1.5, True])
def test_run_rounds_rejects_a_bad_count(rounds):
    with pytest.raises(ValueError, match="rounds"):
        decode.run_rounds([{}], rounds, run=lambda spec: {})


def test_llama_section_prints_medians_and_each_round(monkeypatch):
    counter = itertools.count()

    def fake_worker(spec):
        step = next(counter)
        if spec["onebit"]:
            return {"tok_s_a0": 10.0 + step, "tok_s_a8": 20.0 + step, "model_bytes": 1e9, "peak_rss": 2e9,
                    "isa": "avx512"}
        return {"tok_s": 2.0 + step / 100, "model_bytes": 4e9, "peak_rss": 5e9}

    monkeypatch.setattr(decode, "run_worker", fake_worker)
    monkeypatch.setattr(decode, "mem_available", lambda: 1e12)
    lines = []
    args = argparse.Namespace(layers=2, quick=False, compile=False, format="binary", torch_head=False,
                              torch_attention=False, no_llama_cpp=True, rounds=2, head_bits=8, bf16_head_row=False,
                              static_cache_row=False)
    decode.llama_section(args, out=lines.append)
    text = "\n".join(lines)
    # calls in rotation: 1-bit 0, bf16 1, bf16 2M 2, then 1-bit 3, bf16 4, bf16 2M 5 -> 1-bit a8 median 21.5
    assert "| 1-bit act_bits=8 (avx512) | 2 | 1.00 GB | 2.00 GB | 21.50 |" in text
    assert "- 1-bit act_bits=8: 20.00 / 23.00" in text
    assert "- dense bf16, 2 MiB pages: 2.02 / 2.05" in text
