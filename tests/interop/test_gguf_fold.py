"""GGUF export, the parts without llama.cpp: block bytes (Q1_0 / TQ1_0 / TQ2_0) and the exact fold of g into
llama.cpp's graph, checked by running the folded tensors as a float transformers model."""

import numpy as np
import pytest
import torch

import hf_onebit
from hf_onebit import OneBitConfig
from hf_onebit.fixtures.tiny_model import tiny_llama, tiny_qwen2
from hf_onebit.interop.gguf import blocks
from hf_onebit.interop.gguf.fold import ExportError, fold_llama, folded_model


@pytest.mark.parametrize("qtype", ["Q1_0", "TQ1_0", "TQ2_0"])
def test_blocks_round_trip_and_sizes(qtype):
    size, nbytes = blocks.BLOCKS[qtype]
    gen = torch.Generator().manual_seed(0)
    low = -1 if qtype != "Q1_0" else 0
    values = torch.randint(low, 2, (5, 3 * size), generator=gen).to(torch.int8)
    if qtype == "Q1_0":
        values = values * 2 - 1
    scales = torch.randn(5, generator=gen)
    data = blocks.encode(values, scales, qtype)
    assert data.dtype == torch.uint8 and tuple(data.shape) == (5, 3 * nbytes)
    expected = values.float() * scales.to(torch.float16).float()[:, None]
    assert torch.equal(blocks.decode(data, qtype, 3 * size), expected)


@pytest.mark.parametrize("qtype", ["TQ1_0", "TQ2_0"])
def test_ternary_blocks_match_the_gguf_package(qtype):
    """The gguf package (llama.cpp's Python side) decodes our bytes to the same values."""
    import gguf
    from gguf.quants import dequantize

    gen = torch.Generator().manual_seed(1)
    values = torch.randint(-1, 2, (3, 512), generator=gen).to(torch.int8)
    scales = torch.rand(3, generator=gen) + 0.5
    data = blocks.encode(values, scales, qtype).numpy()
    theirs = dequantize(data, getattr(gguf.GGMLQuantizationType, qtype))
    np.testing.assert_array_equal(theirs, blocks.decode(torch.from_numpy(data), qtype, 512).numpy())


def test_blocks_reject_what_the_type_cannot_hold():
    with pytest.raises(ValueError, match="not a multiple of Q1_0's block of 128"):
        blocks.encode(torch.ones(2, 100, dtype=torch.int8), torch.ones(2), "Q1_0")
    with pytest.raises(ValueError, match=r"Q1_0 holds only \(-1, 1\); found 0"):
        blocks.encode(torch.zeros(2, 128, dtype=torch.int8), torch.ones(2), "Q1_0")
    with pytest.raises(ValueError, match="GGUF type: got 'Q4_0'"):
        blocks.encode(torch.ones(2, 128, dtype=torch.int8), torch.ones(2), "Q4_0")


def _tie(model):
    """Make every foldable g equal, as OneBitConfig(tie_input_scales=True) keeps them."""
    kv = model.config.num_key_value_heads
    group = model.config.num_attention_heads // kv
    with torch.no_grad():
        for layer in model.model.layers:
            a, m = layer.self_attn, layer.mlp
            for other in (a.k_proj, a.v_proj):
                other.scale_in.copy_(a.q_proj.scale_in)
            m.up_proj.scale_in.copy_(m.gate_proj.scale_in)
            g = a.o_proj.scale_in.view(kv, group, -1)
            g.copy_(g[:, :1].expand_as(g).clone())


@pytest.mark.parametrize("weight_format,block", [("binary", 128), ("ternary", 256)])
@pytest.mark.parametrize("make", [tiny_llama, tiny_qwen2], ids=["llama", "qwen2"])
def test_tied_model_folds_exactly_with_padding(weight_format, block, make):
    """hidden 64, 4 heads x 16 (2 KV heads), MLP 96: every width is padded; the folded model computes the same
    (Qwen2: with its q/k/v biases, v's scaled by o's g, and its rotary halves unpermuted)."""
    torch.manual_seed(0)
    model = make(seed=0)
    hf_onebit.quantize_(model, OneBitConfig(weight_format=weight_format, act_bits=0))
    with torch.no_grad():  # random non-trivial scales, some g negative
        for m in model.modules():
            if isinstance(m, hf_onebit.OneBitLinear):
                m.scale_in.copy_(torch.randn_like(m.scale_in.float()).to(m.scale_in.dtype))
                m.scale_out.copy_((torch.rand_like(m.scale_out.float()) + 0.5).to(m.scale_out.dtype))
    _tie(model)
    tensors = fold_llama(model, block)
    r = tensors.report
    assert r.exact and r.hidden == (64, block) and r.intermediate == (96, block)
    assert r.heads == (4, block // 16) and r.kv_heads == (2, block // 32)  # whole dummy KV groups of 2 x 16
    assert tensors.config["arch"] == ("qwen2" if make is tiny_qwen2 else "llama")
    biases = [name for name in tensors.layers[0] if name.endswith(".bias")]
    assert biases == (["q_proj.bias", "k_proj.bias", "v_proj.bias"] if make is tiny_qwen2 else [])
    ids = torch.randint(model.config.vocab_size, (2, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = model(ids).logits
        folded = folded_model(tensors, round_scales=False)(ids).logits
        stored = folded_model(tensors)(ids).logits
    assert (folded - want).abs().max() <= 1e-4 * want.abs().max()  # the fold and the padding: float32 rounding only
    # what the file adds: its row scales are float16, and the folded ones (h * c, h * g_down) are rounded to it
    assert (stored - want).abs().max() <= 5e-3 * want.abs().max()


def test_untied_model_is_refused_or_approximated_with_its_error():
    torch.manual_seed(0)
    model = tiny_llama(seed=0)
    hf_onebit.quantize_(model, OneBitConfig())
    with pytest.raises(ExportError, match=r"layers\.0\.q_proj/k_proj/v_proj: their input scales g differ.*"
                                          r"tie_input_scales=True.*--approximate"):
        fold_llama(model, 128)
    tensors = fold_llama(model, 128, approximate=True)
    errors = tensors.report.errors
    assert set(errors) >= {"layers.0.q_proj", "layers.1.gate_proj", "layers.0.o_proj"}
    assert all(0 < e < 1 for e in errors.values())
    assert "layers.0.down_proj" not in errors  # down's g always folds exactly into up's h


def test_exporter_refuses_other_architectures_and_float_layers():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(ExportError, match="model_type: got 'gpt2'"):
        fold_llama(gpt2, 128)
    with pytest.raises(ExportError, match=r"layers\.0\.q_proj: a Linear, not a OneBitLinear"):
        fold_llama(tiny_llama(seed=0), 128)
    windowed = tiny_qwen2(seed=0)
    windowed.config.use_sliding_window = True
    with pytest.raises(ExportError, match="use_sliding_window=True.*allowed: False"):
        fold_llama(windowed, 128)
    biased = tiny_llama(seed=0)
    biased.config.attention_bias = True
    with pytest.raises(ExportError, match="attention_bias=True: llama.cpp's llama graph has no such biases"):
        fold_llama(biased, 128)
    qwen2 = tiny_qwen2(seed=0)
    hf_onebit.quantize_(qwen2, OneBitConfig())
    qwen2.model.layers[1].self_attn.k_proj.bias = None
    with pytest.raises(ExportError, match=r"layers\.1\.k_proj: has no bias; llama.cpp's qwen2 graph has biases in "
                                          r"q_proj, k_proj, v_proj"):
        fold_llama(qwen2, 128, approximate=True)


def _tied_saved_model(tmp_path, weight_format="binary"):
    from transformers import AutoModelForCausalLM

    from gguf_helpers import tokenizer_with_merges
    from hf_onebit.fixtures.tiny_model import save_tiny_llama

    float_dir = save_tiny_llama(str(tmp_path / "float"), vocab_size=260)
    model = AutoModelForCausalLM.from_pretrained(
        float_dir, quantization_config=OneBitConfig(weight_format=weight_format, tie_input_scales=True))
    path = tmp_path / f"tied-{weight_format}"
    model.save_pretrained(path)
    tokenizer_with_merges().save_pretrained(path)
    return model, path


def test_export_writes_what_llama_cpp_reads(tmp_path):
    """The file's metadata and tensors, read back with the gguf package: padded widths, the head size stated, the
    1-bit tensors decoding to the folded values."""
    import gguf

    from hf_onebit.interop.gguf import export_gguf
    from gguf_helpers import tokenizer_with_merges

    model, _ = _tied_saved_model(tmp_path)
    out = tmp_path / "m.gguf"
    summary = export_gguf(model, tokenizer_with_merges(), str(out))
    assert summary.qtype == "Q1_0" and summary.report.exact and "exact" in summary.table()
    reader = gguf.GGUFReader(str(out))
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.")}
    assert fields["general.architecture"] == "llama" and fields["llama.embedding_length"] == 128
    assert fields["llama.attention.head_count"] == 8 and fields["llama.attention.head_count_kv"] == 4
    assert fields["llama.attention.key_length"] == 16 and fields["llama.feed_forward_length"] == 128
    assert fields["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(model.config.rms_norm_eps * 64 / 128)
    assert reader.fields["tokenizer.ggml.merges"].contents() == ["a b"]
    tensors = {t.name: t for t in reader.tensors}
    q = tensors["blk.1.attn_q.weight"]
    assert q.tensor_type == gguf.GGMLQuantizationType.Q1_0 and list(q.shape) == [128, 128]
    folded = fold_llama(model, 128).layers[1]["q_proj"]
    data = torch.from_numpy(np.array(q.data, dtype=np.uint8)).reshape(128, -1)
    assert torch.equal(blocks.decode(data, "Q1_0", 128),
                       folded.values.float() * folded.scales.to(torch.float16).float()[:, None])
    assert tensors["token_embd.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32


def test_export_cli(tmp_path, capsys):
    from hf_onebit.cli import main

    _, path = _tied_saved_model(tmp_path, "ternary")
    assert main(["export", "gguf", str(path), str(tmp_path / "t.gguf"), "--type", "TQ1_0"]) == 0
    assert "TQ1_0" in capsys.readouterr().out and (tmp_path / "t.gguf").stat().st_size > 0
    with pytest.raises(SystemExit, match="exists; pass --overwrite"):
        main(["export", "gguf", str(path), str(tmp_path / "t.gguf")])
    with pytest.raises(SystemExit, match="type: Q1_0 holds only -1 / \\+1; a ternary model needs TQ1_0 or TQ2_0"):
        main(["export", "gguf", str(path), str(tmp_path / "q.gguf"), "--type", "Q1_0"])
