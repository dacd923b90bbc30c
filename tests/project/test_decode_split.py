"""benchmarks/decode_split.py: its hooks attribute a forward's time to the packed linears and the output head, and
leave the model as it was once removed."""

import os
import sys

import torch
from transformers import AutoModelForCausalLM

import hf_onebit  # noqa: F401
from hf_onebit import OneBitConfig, OneBitLinear

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
import decode_split  # noqa: E402


def test_timers_attribute_time_to_packed_linears_and_head(tiny_checkpoint):
    path, _ = tiny_checkpoint("llama")
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=OneBitConfig()).eval()
    n_packed = sum(isinstance(m, OneBitLinear) for m in model.modules())
    assert n_packed == 2 * 7
    ids = torch.randint(0, 128, (1, 8))
    with torch.inference_mode():
        before = model(ids).logits
    totals = {"packed linears": 0.0, "output head": 0.0}
    handles = decode_split.add_timers(model, totals)
    assert len(handles) == 2 * (n_packed + 1)  # a pre and a post hook per timed module
    with torch.inference_mode():
        during = model(ids).logits
    assert totals["packed linears"] > 0 and totals["output head"] > 0
    for handle in handles:
        handle.remove()
    seen = dict(totals)
    with torch.inference_mode():
        after = model(ids).logits
    assert totals == seen  # removed: nothing timed any more
    torch.testing.assert_close(during, before)
    torch.testing.assert_close(after, before)


def test_head_gemv_times_torch_and_float_head(tiny_checkpoint):
    path, _ = tiny_checkpoint("llama")
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=OneBitConfig(), dtype=torch.bfloat16)
    times = decode_split.head_gemv(model, rounds=2, calls=1)
    assert set(times) == {"torch F.linear", "FloatHead, bf16 weights", "FloatHead, int8 copy"}
    assert all(seconds > 0 for seconds, _ in times.values())
    n, k = model.lm_head.weight.shape
    assert times["FloatHead, bf16 weights"][1] == 2 * n * k and times["FloatHead, int8 copy"][1] == n * k + 4 * n


def test_the_attention_timer_times_the_attention_function_and_gives_the_model_back(tiny_checkpoint):
    path, _ = tiny_checkpoint("llama")
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=OneBitConfig()).eval()
    assert model.config._attn_implementation == "onebit_sdpa"  # as hf_onebit's quantizer sets it
    ids = torch.randint(0, 128, (1, 8))
    with torch.inference_mode():
        before = model(ids).logits
    totals = {"attention": 0.0}
    restore = decode_split.time_attention(model, totals)
    assert model.config._attn_implementation == "timed_onebit_sdpa"
    with torch.inference_mode():
        during = model(ids).logits
    assert totals["attention"] > 0
    restore()
    assert model.config._attn_implementation == "onebit_sdpa"
    torch.testing.assert_close(during, before)
