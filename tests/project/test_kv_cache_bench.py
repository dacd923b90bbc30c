"""benchmarks/kv_cache.py: both caches decode exactly the asked number of tokens (no end-of-sequence stop), and the
same greedy tokens; a rate for every (length, cache)."""

import os
import sys

import torch
from transformers import AutoModelForCausalLM

import hf_onebit  # noqa: F401
from hf_onebit import OneBitConfig

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
import kv_cache  # noqa: E402


def test_rates_for_each_length_and_cache(tiny_checkpoint):
    path, _ = tiny_checkpoint("llama")
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=OneBitConfig()).eval()
    model.generation_config.eos_token_id = 0  # a stop the benchmark must not take
    result = kv_cache.rates(model, [3, 6], repeats=1)
    assert set(result) == {(n, cache) for n in (3, 6) for cache in kv_cache.CACHES}
    assert all(rate > 0 for rate in result.values())
    assert model.generation_config.eos_token_id == 0  # the model's own config untouched
    prompt = torch.randint(0, 128, (1, 5), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        outs = [model.generate(prompt, max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0,
                               cache_implementation=cache) for cache in kv_cache.CACHES]
    assert torch.equal(outs[0], outs[1])
