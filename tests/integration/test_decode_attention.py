"""``attn_implementation="onebit_sdpa"`` (hf_onebit/integration/attention.py): 1-bit models made or loaded by
hf_onebit run it; their decode steps compute what transformers' ``sdpa`` computes (greedy tokens and logits), with
left padding and grouped-query heads; every other call goes to ``sdpa`` itself; and the real SmolLM2 decodes the
same text on it."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

import hf_onebit
from hf_onebit import OneBitConfig
from hf_onebit.integration import attention

from conftest import build_tiny


def decode(model, ids, mask=None, steps=6):
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
                             output_logits=True, return_dict_in_generate=True, pad_token_id=0)
    return out.sequences, torch.stack(out.logits)


def calls_of(monkeypatch):
    """Counts of calls the C kernel served and calls it left to sdpa."""
    counts = {"kernel": 0, "sdpa": 0}
    kernel, sdpa = attention.decode_attention, attention.sdpa_attention_forward

    def counted_kernel(*args, **kwargs):
        out = kernel(*args, **kwargs)
        counts["kernel"] += out is not None
        return out

    def counted_sdpa(*args, **kwargs):
        counts["sdpa"] += 1
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(attention, "decode_attention", counted_kernel)
    monkeypatch.setattr(attention, "sdpa_attention_forward", counted_sdpa)
    return counts


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma"])
def test_quantized_models_run_it_and_decode_as_sdpa(family, monkeypatch):
    model = hf_onebit.quantize_(build_tiny(family, layers=2), OneBitConfig(act_bits=0), progress=False)
    assert model.config._attn_implementation == attention.ATTENTION_NAME
    ids = torch.randint(1, 128, (2, 5), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # the first row left-padded
    counts = calls_of(monkeypatch)
    tokens, logits = decode(model, ids, mask)
    # prefill (5 positions) went to sdpa, the 5 decode steps after it to the kernel, in each of the 2 layers
    assert counts == {"kernel": 2 * 5, "sdpa": 2}
    model.set_attn_implementation("sdpa")
    ref_tokens, ref_logits = decode(model, ids, mask)
    assert torch.equal(tokens, ref_tokens)
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=1e-4)


def test_loading_and_reloading_sets_it_and_another_implementation_is_kept(tiny_checkpoint, tmp_path):
    src, _ = tiny_checkpoint("llama")
    model = AutoModelForCausalLM.from_pretrained(src, quantization_config=OneBitConfig())
    assert model.config._attn_implementation == attention.ATTENTION_NAME
    model.save_pretrained(tmp_path / "q")
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "q").config._attn_implementation == "onebit_sdpa"
    eager = AutoModelForCausalLM.from_pretrained(tmp_path / "q", attn_implementation="eager")
    assert eager.config._attn_implementation == "eager"  # a model not on sdpa keeps its implementation
    # the name is transformers' to resolve, as any registered attention (a float model can ask for it too)
    dense = AutoModelForCausalLM.from_pretrained(src, attn_implementation=attention.ATTENTION_NAME)
    assert dense.config._attn_implementation == attention.ATTENTION_NAME


def test_training_and_disabled_calls_take_sdpa(monkeypatch):
    model = hf_onebit.quantize_(build_tiny("llama"), OneBitConfig(act_bits=0), progress=False)
    counts = calls_of(monkeypatch)
    ids = torch.randint(1, 128, (1, 1))
    q = torch.randn(1, 4, 1, 16, requires_grad=True)
    k, v = torch.randn(1, 2, 3, 16), torch.randn(1, 2, 3, 16)
    layer = model.model.layers[0].self_attn
    out, _ = attention.onebit_sdpa_attention_forward(layer, q, k, v, None, scaling=0.25)
    out.sum().backward()  # a gradient: the call went to sdpa
    assert q.grad is not None and counts == {"kernel": 0, "sdpa": 1}
    with torch.no_grad():
        attention.onebit_sdpa_attention_forward(layer, q, k, v, None, scaling=0.25)
    assert counts == {"kernel": 1, "sdpa": 1}
    monkeypatch.setenv("HF_ONEBIT_DECODE_ATTENTION", "0")
    with torch.no_grad():
        model(ids)
    assert counts == {"kernel": 1, "sdpa": 3}  # both layers on sdpa
    monkeypatch.delenv("HF_ONEBIT_DECODE_ATTENTION")
    # an argument that changes what attention computes: passed on to sdpa as given (which may refuse it)
    monkeypatch.setattr(attention, "sdpa_attention_forward", lambda *args, **kwargs: ("sdpa", kwargs))
    with torch.no_grad():
        served, kwargs = attention.onebit_sdpa_attention_forward(layer, q, k, v, None, scaling=0.25, softcap=30.0)
    assert served == "sdpa" and kwargs["softcap"] == 30.0 and kwargs["scaling"] == 0.25


def test_the_real_model_decodes_the_same_text(smollm2_dir):
    """SmolLM2-135M-Instruct in bf16 (9 query heads on 3 key/value heads, head size 64), float weights on
    onebit_sdpa: the same greedy answer as on sdpa, logits within bf16's rounding of each other."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.bfloat16)
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    model.set_attn_implementation(attention.ATTENTION_NAME)
    tokens, logits = decode(model, ids, steps=8)
    model.set_attn_implementation("sdpa")
    ref_tokens, ref_logits = decode(model, ids, steps=8)
    assert torch.equal(tokens, ref_tokens), tok.decode(tokens[0])
    assert "Paris" in tok.decode(tokens[0, ids.shape[1]:])
    assert (logits.float() - ref_logits.float()).abs().max() < 0.05 * ref_logits.float().abs().max()
