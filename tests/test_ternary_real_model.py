"""Ternary initialisation on real SmolLM2-135M layers: lower reconstruction error than binary SVID and BitNet absmean."""

import os

import pytest
import torch
from safetensors import safe_open

from hf_onebit.init import absmean_ternary, svid_rank1, ternary_init

pytestmark = pytest.mark.real_model

NAMES = ["model.layers.3.self_attn.q_proj.weight", "model.layers.3.self_attn.v_proj.weight",
         "model.layers.10.mlp.down_proj.weight", "model.layers.20.mlp.up_proj.weight"]


def rel_error(w, approx):
    return float((w - approx).norm() / w.norm())


def test_ternary_fit_on_real_layers(smollm2_dir):
    with safe_open(os.path.join(smollm2_dir, "model.safetensors"), "pt") as f:
        weights = {name: f.get_tensor(name).float() for name in NAMES}
    for name, w in weights.items():
        values, h, g = ternary_init(w)
        ternary = rel_error(w, h[:, None] * values * g[None, :])
        a, b = svid_rank1(w)
        binary = rel_error(w, a[:, None] * torch.where(w >= 0, 1.0, -1.0) * b[None, :])
        per_tensor = w.abs().mean()  # BitNet b1.58 itself: one gamma for the whole tensor
        bitnet = rel_error(w, per_tensor * torch.clamp(torch.round(w / per_tensor), -1, 1))
        absmean = rel_error(w, w.abs().mean(dim=1, keepdim=True) * absmean_ternary(w))
        # measured: ternary 0.471-0.484, binary SVID 0.608-0.618, row absmean 0.529-0.544, per-tensor 0.537-0.594
        assert ternary < 0.8 * binary, (name, ternary, binary)
        assert ternary < 0.93 * absmean < 0.93 * bitnet + 1e-6, (name, ternary, absmean, bitnet)


def test_decode_from_t5_copies_matches_the_2bit_codes(smollm2_dir, monkeypatch):
    """The real SmolLM2 as ternary with int8 activations: greedy decoding from the t5 copies (built on each layer's
    second call) gives exactly the tokens and logits of decoding from the 2-bit codes alone. One model for both runs:
    torch's own ops (attention, lm_head) may round differently on tensors at other addresses, e.g. a deep copy."""
    from transformers import AutoModelForCausalLM

    from hf_onebit import OneBitConfig, OneBitLinear
    from hf_onebit.ops import cpu
    from hf_onebit.ops.cpu import plan as plans
    from hf_onebit.ops.cpu import t5

    if not cpu.is_available() or not t5.supported(cpu.binding.library(), cpu.binding.active_isa()):
        pytest.skip("no t5 kernel for the active ISA (needs AVX-512 VBMI)")
    config = OneBitConfig(weight_format="ternary", act_bits=8)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, quantization_config=config, dtype=torch.float32).eval()
    layers = [m for m in model.modules() if isinstance(m, OneBitLinear)]
    prompt = torch.tensor([[1, 504, 3458, 282, 4649, 314]])

    def greedy():
        with torch.no_grad():
            out = model.generate(prompt, max_new_tokens=6, do_sample=False, output_logits=True,
                                 return_dict_in_generate=True)
        return out.sequences, torch.stack(out.logits)

    monkeypatch.setenv(t5.T5_ENV, "0")
    tokens_2bit, logits_2bit = greedy()
    assert layers and all(plans.plan_of(m.weight).t5 is None for m in layers)
    for m in layers:  # forget the plans: the next run makes new ones, with t5 copies this time
        plans.forget_plan(m.weight)
    monkeypatch.setenv(t5.T5_ENV, "1")
    tokens_t5, logits_t5 = greedy()
    assert all(plans.plan_of(m.weight).t5 is not None for m in layers)  # every layer decoded from its copy
    assert torch.equal(tokens_t5, tokens_2bit)
    torch.testing.assert_close(logits_t5, logits_2bit, rtol=0, atol=0)
