"""Ternary models through transformers: quantize on load, save, plain reload, dequantize, bad checkpoints, CLI."""

import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

import hf_onebit
from hf_onebit import OneBitConfig, OneBitLinear
from hf_onebit.integration.checkpoint import WEIGHT_FORMAT_KEY, CheckpointError
from hf_onebit.cli import main
from hf_onebit.eval import size_report
from hf_onebit.formats.packing import METADATA_KEY, bits_per_weight

LAYER = "model.layers.1.mlp.down_proj"  # 100 -> 72 in the tiny llama (hidden 72, intermediate 100)


@pytest.fixture(scope="module")
def ternary_dirs(tmp_path_factory):
    from conftest import build_tiny

    root = tmp_path_factory.mktemp("ternary")
    float_model = build_tiny("llama")
    float_model.save_pretrained(root / "float")
    # exact activations: the tests compare the packed model with its dequantized float form
    config = OneBitConfig(weight_format="ternary", act_bits=0)
    model = AutoModelForCausalLM.from_pretrained(root / "float", quantization_config=config)
    model.save_pretrained(root / "ternary")
    return str(root / "float"), str(root / "ternary"), float_model, model


def layers(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, OneBitLinear)}


def test_quantize_save_reload_dequantize(ternary_dirs, input_ids):
    _, out, float_model, model = ternary_dirs
    found = layers(model)
    assert len(found) == 14 and all(m.weight_format == "ternary" for m in found.values())
    for name, layer in found.items():
        expected = OneBitLinear.from_linear(float_model.get_submodule(name), OneBitConfig(weight_format="ternary"))
        assert torch.equal(layer.weight, expected.weight) and torch.equal(layer.scale_out, expected.scale_out), name
    with torch.no_grad():
        logits = model(input_ids).logits
    with safe_open(os.path.join(out, "model.safetensors"), "pt") as f:
        assert f.metadata()[WEIGHT_FORMAT_KEY] == "ternary" and f.metadata()[METADATA_KEY] == "1"
        assert tuple(f.get_slice(f"{LAYER}.weight").get_shape()) == (72, 25)
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["quantization_config"]["weight_format"] == "ternary"

    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert all(m.weight_format == "ternary" for m in layers(reloaded).values())
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids).logits, logits)
    reloaded.dequantize()
    assert not layers(reloaded)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids).logits, logits, rtol=1e-4, atol=1e-4)


def test_bits_per_weight_is_about_two(ternary_dirs):
    model = ternary_dirs[3]
    report = size_report(model)
    expected = sum(bits_per_weight(m.in_features, m.out_features, weight_format="ternary") * m.in_features * m.out_features
                   for m in layers(model).values())
    assert report.quantized_bits == round(expected)
    assert 2.0 < report.bits_per_quantized_weight < 2.5  # tiny 72/100-wide layers: fp16 vectors cost ~0.4 bit


def test_latent_training_model_saves_packed_ternary(ternary_dirs, tmp_path, input_ids):
    src, out, _, packed_model = ternary_dirs
    latent = AutoModelForCausalLM.from_pretrained(src, quantization_config=OneBitConfig(weight_format="ternary", act_bits=0,
                                                                                          training=True))
    assert all(m.is_latent for m in layers(latent).values())
    with torch.no_grad():
        torch.testing.assert_close(latent(input_ids).logits, packed_model(input_ids).logits, rtol=1e-3, atol=1e-3)
    latent.save_pretrained(tmp_path / "saved")
    saved = load_file(tmp_path / "saved" / "model.safetensors")
    assert torch.equal(saved[f"{LAYER}.weight"], load_file(os.path.join(out, "model.safetensors"))[f"{LAYER}.weight"])


def copy_checkpoint(src, dst):
    os.makedirs(dst)
    for name in os.listdir(src):
        with open(os.path.join(src, name), "rb") as a, open(os.path.join(dst, name), "wb") as b:
            b.write(a.read())
    return dst


def set_weight_format(folder, weight_format):
    path = os.path.join(folder, "config.json")
    config = json.load(open(path))
    config["quantization_config"]["weight_format"] = weight_format
    json.dump(config, open(path, "w"))


def test_ternary_weights_under_a_binary_config_raise(ternary_dirs, tmp_path):
    bad = copy_checkpoint(ternary_dirs[1], tmp_path / "bad")
    set_weight_format(bad, "binary")
    with pytest.raises(CheckpointError, match=r"\.weight: the checkpoint holds ternary packed weights .* "
                                              r"weight_format='binary'"):
        AutoModelForCausalLM.from_pretrained(bad)


def test_binary_weights_under_a_ternary_config_raise(ternary_dirs, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(ternary_dirs[0], quantization_config=OneBitConfig())
    model.save_pretrained(tmp_path / "binary")
    set_weight_format(tmp_path / "binary", "ternary")
    with pytest.raises(CheckpointError, match=r"holds binary packed weights .* weight_format='ternary'"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "binary")
    # an older binary file without the format key is still recognised by its shape
    path = tmp_path / "binary" / "model.safetensors"
    save_file(load_file(path), path, metadata={"format": "pt", METADATA_KEY: "1"})
    with pytest.raises(CheckpointError, match=r"layers\.\d\.\w+\.\w+_proj\.weight: the checkpoint holds binary packed"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "binary")


def test_truncated_ternary_weight_is_named(ternary_dirs, tmp_path):
    bad = copy_checkpoint(ternary_dirs[1], tmp_path / "bad")
    path = os.path.join(bad, "model.safetensors")
    tensors = load_file(path)
    tensors[f"{LAYER}.weight"] = tensors[f"{LAYER}.weight"][:, :-1].contiguous()
    save_file(tensors, path, metadata={"format": "pt", METADATA_KEY: "1", WEIGHT_FORMAT_KEY: "ternary"})
    with pytest.raises(CheckpointError, match=rf"{LAYER}\.weight: the checkpoint holds U8 \(72, 24\), expected U8 \(72, 25\)"):
        AutoModelForCausalLM.from_pretrained(bad)


def test_cli_quantize_and_info_show_the_format(tmp_path, capsys):
    from hf_onebit.fixtures.tiny_model import save_tiny_llama

    src = save_tiny_llama(str(tmp_path / "float"))
    assert main(["quantize", src, str(tmp_path / "q"), "--weight-format", "ternary"]) == 0
    printed = capsys.readouterr().out
    assert "ternary layers" in printed
    assert json.load(open(tmp_path / "q" / "config.json"))["quantization_config"]["weight_format"] == "ternary"
    assert main(["info", str(tmp_path / "q")]) == 0
    out = capsys.readouterr().out
    assert "weight format: ternary" in out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    # q_proj 64x64: 64*16 bytes of codes + 2 fp16 vectors of 64 -> (8192 + 2048) / 4096 = 2.5 bits/weight
    assert rows["q_proj"].rstrip(" |").endswith("2.5")
    assert "| 14 " in rows["all ternary layers"]


def test_lora_merge_and_unmerge_on_a_ternary_layer():
    import hf_onebit.interop.peft  # noqa: F401
    from peft import get_peft_model

    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(40, 24))
    hf_onebit.quantize_(base, OneBitConfig(weight_format="ternary", scale_dtype="float32"), progress=False)
    layer = base[0]
    original = {k: v.clone() for k, v in layer.packed_state().items()}
    model = get_peft_model(base, hf_onebit.interop.peft.lora_config(r=4, target_modules=["0"], init_lora_weights=False))
    x = torch.randn(3, 40)
    with pytest.warns(UserWarning, match="lossy"):
        model.merge_adapter()
    assert layer.weight.shape == (24, 10) and layer.weight_format == "ternary"
    assert model.base_model.model[0].merge_error < 1.0  # part of the update survives the ternary re-quantization
    model.unmerge_adapter()
    assert all(torch.equal(getattr(layer, k), v) for k, v in original.items())
    assert model(x).shape == (3, 24)


def test_device_map_sizing_counts_two_bits_per_weight():
    from conftest import tiny_config
    from transformers.integrations.accelerate import compute_module_sizes

    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(tiny_config("llama", hidden=128, intermediate=256))
    quantizer = hf_onebit.OneBitHfQuantizer(OneBitConfig(weight_format="ternary"), pre_quantized=False)
    quantizer.preprocess_model(meta)
    sizes, _ = compute_module_sizes(meta, quantizer)
    # q_proj 128 -> 64: 128*64 codes of 2 bits = 2048 bytes + two fp16 vectors (128 + 64) * 2 bytes
    assert sizes["model.layers.0.self_attn.q_proj"] == 2048 + 384


def test_on_the_fly_ternary_quantization_with_disk_offload(tmp_path):
    from hf_onebit.fixtures.tiny_model import save_tiny_llama

    src = save_tiny_llama(str(tmp_path / "float"), hidden=256, intermediate=512, layers=4, head_dim=64)
    config = OneBitConfig(weight_format="ternary")
    ids = torch.randint(0, 256, (2, 10))
    with torch.no_grad():
        expected = AutoModelForCausalLM.from_pretrained(src, quantization_config=config)(ids).logits
    model = AutoModelForCausalLM.from_pretrained(src, quantization_config=config, device_map="auto",
                                                 max_memory={"cpu": "800KB"}, offload_folder=str(tmp_path / "off"))
    assert "disk" in model.hf_device_map.values()
    # the ternary codes of disk-offloaded layers were packed into the offload folder
    packed = [f for f in os.listdir(tmp_path / "off") if f.endswith(".weight.safetensors")]
    assert packed
    with safe_open(str(tmp_path / "off" / packed[0]), "pt") as f:
        key = next(iter(f.keys()))
        layer = model.get_submodule(key.removesuffix(".weight"))
        assert f.get_tensor(key).shape == (layer.out_features, (layer.in_features + 3) // 4)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, expected)
