"""FloatHead, the float output head of a 1-bit model (hf_onebit/nn/float_head.py, hf_onebit/integration/head.py):
nn.Linear's parameters and results, the CPU kernels on decode calls (float weights or their int8 copy, remade when
the weight changes), put in place by the quantizer and quantize_ with the config's head_bits, set_runtime's switch,
tied weights kept tied, nothing changed in what is saved."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModelForCausalLM

from hf_onebit import OneBitConfig, quantize_, set_runtime
from hf_onebit.fixtures.tiny_model import tiny_llama, tiny_llama_config
from hf_onebit.integration.head import use_float_head
from hf_onebit.nn import FloatHead
from hf_onebit.ops import cpu
from hf_onebit.ops.cpu import gemv

needs_kernels = pytest.mark.skipif(not cpu.is_available(), reason=f"no CPU kernel library: {cpu.load_error()}")


def test_from_linear_holds_the_same_parameters():
    linear = nn.Linear(16, 8, bias=True).bfloat16()
    head = FloatHead.from_linear(linear)
    assert head.weight is linear.weight and head.bias is linear.bias
    assert (head.in_features, head.out_features) == (16, 8)
    assert head.state_dict().keys() == linear.state_dict().keys()
    assert isinstance(head, nn.Linear)


@needs_kernels
def test_decode_calls_run_the_kernel_and_the_rest_run_torch(monkeypatch):
    torch.manual_seed(0)
    head = FloatHead.from_linear(nn.Linear(96, 40, bias=False).bfloat16())
    calls = []
    real = gemv.bf16_linear
    monkeypatch.setattr(gemv, "bf16_linear", lambda *a: calls.append(a[0].shape) or real(*a))
    x = torch.randn(1, 1, 96).bfloat16()
    with torch.no_grad():
        y = head(x)
        assert torch.equal(y, real(x, head.weight))  # the kernel's result
        assert (y.float() - F.linear(x, head.weight).float()).abs().max() <= 0.02 * y.float().abs().max()
        prefill = torch.randn(1, 12, 96).bfloat16()
        assert torch.equal(head(prefill), F.linear(prefill, head.weight))  # 12 rows: torch
    assert calls == [(1, 1, 96), (1, 12, 96)]
    y = head(x)  # with gradients: torch, and they reach the weight
    y.float().sum().backward()
    assert head.weight.grad is not None and torch.equal(y, F.linear(x, head.weight))


def save_float(tmp_path, tie: bool) -> str:
    config = tiny_llama_config()
    config.tie_word_embeddings = tie
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "float")
    return str(tmp_path / "float")


@needs_kernels
@pytest.mark.parametrize("tie", [False, True])
def test_the_quantizer_installs_it_and_saving_is_unchanged(tmp_path, monkeypatch, tie):
    path = save_float(tmp_path, tie)
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=OneBitConfig(head_bits=16),
                                                 dtype=torch.bfloat16)
    assert type(model.lm_head) is FloatHead and model.lm_head.weight_bits == 16
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tie
    prompt = torch.tensor([[5, 6, 7, 8]])
    fast = model.generate(prompt, max_new_tokens=6, do_sample=False)
    monkeypatch.setenv(gemv.GEMV_ENV, "0")
    assert torch.equal(model.generate(prompt, max_new_tokens=6, do_sample=False), fast)
    monkeypatch.delenv(gemv.GEMV_ENV)
    model.save_pretrained(tmp_path / "q")
    saved = load_file(tmp_path / "q" / "model.safetensors")
    assert ("lm_head.weight" in saved) == (not tie)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "q")
    assert type(reloaded.lm_head) is FloatHead and reloaded.lm_head.weight_bits == 16
    assert (reloaded.lm_head.weight is reloaded.model.embed_tokens.weight) == tie
    assert torch.equal(reloaded.generate(prompt, max_new_tokens=6, do_sample=False), fast)


def test_quantize_installs_it_once_and_leaves_hooked_heads():
    model = quantize_(tiny_llama(), OneBitConfig(), progress=False)
    assert type(model.lm_head) is FloatHead and model.lm_head.weight_bits == 8  # the default head_bits
    assert use_float_head(model) is None  # already one
    other = tiny_llama()
    other.lm_head.register_forward_hook(lambda *a: None)  # e.g. a hook a new module would not carry
    assert use_float_head(other) is None and type(other.lm_head) is nn.Linear
    assert use_float_head(nn.Sequential(nn.Linear(2, 2))) is None  # no output embeddings


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_int8_head_reads_a_copy_made_once_and_again_after_an_update(dtype):
    torch.manual_seed(1)
    head = FloatHead.from_linear(nn.Linear(96, 40, bias=True).to(dtype), weight_bits=8)
    x = torch.randn(1, 1, 96).to(dtype)
    with torch.no_grad():
        prefill = torch.randn(1, 12, 96).to(dtype)
        assert torch.equal(head(prefill), F.linear(prefill, head.weight, head.bias))  # 12 rows: the float weights
        assert head._int8 is None  # ... and no copy made for them
        y = head(x)
        q, scale = head.int8_weight()
        assert torch.equal(y, gemv.int8_linear(x, q, scale, head.bias))
        expected = gemv.int8_linear_reference(x, q, scale, head.bias)
        assert (y.float() - expected.float()).abs().max() <= 0.02 * expected.float().abs().max()
        exact = F.linear(x.float(), head.weight.float(), head.bias.float())
        assert (y.float() - exact).abs().max() <= 0.03 * exact.abs().max()  # int8 weights: close to the float ones
        assert head.int8_weight()[0] is q  # unchanged weight: the same copy
        head.weight.mul_(-1)  # an in-place update (as an optimizer step): a new copy
        q2, _ = head.int8_weight()
        assert q2 is not q and torch.equal(q2, -q)
        assert torch.equal(head(x), gemv.int8_linear(x, q2, scale, head.bias))
    assert head.state_dict().keys() == {"weight", "bias"}  # the copy is not saved
    with pytest.raises(ValueError, match=r"FloatHead.weight_bits: got 4; allowed: one of \(16, 8\)"):
        FloatHead.from_linear(nn.Linear(4, 4), weight_bits=4)


@needs_kernels
def test_head_bits_from_the_config_saved_and_switched_by_set_runtime(tmp_path):
    path = save_float(tmp_path, tie=True)
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=OneBitConfig(), dtype=torch.bfloat16)
    assert model.lm_head.weight_bits == 8 and model.config.quantization_config.head_bits == 8
    prompt = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        out = model(prompt[:, :1])
        q, scale = model.lm_head.int8_weight()
        hidden = model.model(prompt[:, :1]).last_hidden_state
        assert torch.equal(out.logits, gemv.int8_linear(hidden, q, scale))  # the decode call read the int8 copy
    assert set_runtime(model, head_bits=16) == 1 and model.lm_head.weight_bits == 16
    model.save_pretrained(tmp_path / "q")
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "q").lm_head.weight_bits == 16  # recorded in the config
    with pytest.raises(ValueError, match=r"set_runtime: head_bits: got 4; allowed: one of \(16, 8\)"):
        set_runtime(model, head_bits=4)
    with pytest.raises(ValueError, match=r"OneBitConfig.head_bits: got '8'; allowed: one of \(16, 8\)"):
        OneBitConfig(head_bits="8")
