"""The real SmolLM2-135M-Instruct: one-line quantize, save, reload in a fresh process, bit-identical logits."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import hf_onebit
from hf_onebit import OneBitConfig, OneBitLinear
from hf_onebit.eval import size_on_disk, size_report

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def quantized(smollm2_dir, tmp_path_factory):
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, quantization_config=OneBitConfig())
    out = tmp_path_factory.mktemp("smollm2-onebit")
    model.save_pretrained(out)
    return model, str(out)


def test_real_model_quantized_layout(quantized, smollm2_dir):
    model, out = quantized
    layers = [m for m in model.modules() if isinstance(m, OneBitLinear)]
    assert len(layers) == 30 * 7
    report = size_report(model)
    # 576/1536-wide layers with fp16 vectors: ~1.03-1.05 bits per weight
    assert 1.0 < report.bits_per_quantized_weight < 1.06
    assert size_on_disk(out) < size_on_disk(smollm2_dir) / 3  # float32 teacher: 538 MB, mostly the 1-bit layers


def test_reload_in_fresh_process_is_bit_identical(quantized, smollm2_dir, tmp_path):
    model, out = quantized
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    ids = tok("The capital of France is Paris. The capital of Italy is", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    torch.save({"ids": ids, "logits": logits}, tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import torch, hf_onebit
        from transformers import AutoModelForCausalLM
        ref = torch.load({str(tmp_path / 'expected.pt')!r})
        m = AutoModelForCausalLM.from_pretrained({out!r})
        with torch.no_grad():
            got = m(ref["ids"]).logits
        assert torch.equal(got, ref["logits"]), (got - ref["logits"]).abs().max()
        print("BIT-IDENTICAL")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "BIT-IDENTICAL" in result.stdout


def test_dequantize_equals_packed_function(quantized):
    model, out = quantized
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.randint(0, 49152, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        packed_logits = reloaded(ids).logits
        reloaded.dequantize()
        assert not any(isinstance(m, OneBitLinear) for m in reloaded.modules())
        dense_logits = reloaded(ids).logits
    # untrained 1-bit logits are large and noisy; compare relative to their scale
    err = (dense_logits - packed_logits).abs().max() / packed_logits.abs().max()
    assert err < 1e-4
