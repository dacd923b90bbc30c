"""accelerate: device_map="auto" with a tight max_memory, CPU + disk offload of packed weights, 1-bit sizing."""

import os

import pytest
import torch
from transformers import AutoModelForCausalLM

import hf_onebit
from hf_onebit.integration.offload import repair_disk_offloaded_signs

from ecosystem_helpers import onebit_checkpoint

# decoder layers dominate this model at 1 bit: each holds ~2.6 MB of float weights but ~84 KB packed
WIDE = dict(hidden=256, intermediate=512, layers=4, head_dim=64)
BUDGET = {"cpu": "800KB"}  # less than a third of ONE float decoder layer


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return onebit_checkpoint(str(tmp_path_factory.mktemp("offload")), **WIDE)


@pytest.fixture(scope="module")
def ids():
    torch.manual_seed(3)
    return torch.randint(0, 256, (2, 10))


@pytest.fixture(scope="module")
def expected(dirs, ids):
    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(dirs[1])(ids).logits


def placement(model):
    devices = model.hf_device_map
    layers = {k: v for k, v in devices.items() if k.startswith("model.layers.")}
    return devices, layers


def test_prequantized_checkpoint_offloads_to_cpu_and_disk(dirs, ids, expected, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(dirs[1], device_map="auto", max_memory=BUDGET,
                                                 offload_folder=str(tmp_path / "off"))
    devices, layers = placement(model)
    assert set(devices.values()) == {"cpu", "disk"}
    # sized at 1 bit per weight: whole decoder layers fit in a budget smaller than one float layer
    assert "cpu" in layers.values() and "disk" in layers.values()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, expected)
    assert repair_disk_offloaded_signs(model) == []  # packed weights are read straight from the checkpoint


def test_on_the_fly_quantization_with_disk_offload(dirs, ids, expected, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(dirs[0], quantization_config=hf_onebit.OneBitConfig(),
                                                 device_map="auto", max_memory=BUDGET,
                                                 offload_folder=str(tmp_path / "off"))
    devices, layers = placement(model)
    assert "disk" in layers.values()
    # the packed signs of disk-offloaded layers were written to the offload folder (transformers 5.23 would
    # otherwise point them at the float source weights)
    assert any(f.endswith(".weight.safetensors") for f in os.listdir(tmp_path / "off"))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, expected)
    model.save_pretrained(tmp_path / "resaved")
    with torch.no_grad():
        assert torch.equal(AutoModelForCausalLM.from_pretrained(tmp_path / "resaved")(ids).logits, expected)


def test_infer_auto_device_map_counts_packed_bytes(dirs):
    from accelerate import infer_auto_device_map
    from transformers.integrations.accelerate import compute_module_sizes

    model = AutoModelForCausalLM.from_pretrained(dirs[1])
    sizes, _ = compute_module_sizes(model, model.hf_quantizer)
    layer = model.model.layers[0]
    float_bytes = sum(m.in_features * m.out_features * 4 for m in layer.modules() if isinstance(m, hf_onebit.OneBitLinear))
    assert sizes["model.layers.0"] < float_bytes / 20
    q = layer.self_attn.q_proj
    assert sizes["model.layers.0.self_attn.q_proj"] == q.out_features * ((q.in_features + 7) // 8) + 2 * (
        q.in_features + q.out_features
    )
    # accelerate's own planner sees the packed parameters: the whole model fits in its packed size, not a byte less
    total = sizes[""]
    assert infer_auto_device_map(model, max_memory={"cpu": total}) == {"": "cpu"}
    assert "disk" in infer_auto_device_map(model, max_memory={"cpu": total - 1},
                                           no_split_module_classes=["LlamaDecoderLayer"]).values()
