"""A onebit checkpoint that does not match the model raises a clear error; it never loads random weights."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

import hf_onebit  # noqa: F401  (registers "onebit")
from hf_onebit import OneBitConfig
from hf_onebit.integration.checkpoint import CheckpointError
from hf_onebit.formats.packing import METADATA_KEY

LAYER = "model.layers.1.mlp.down_proj"


@pytest.fixture
def saved(tmp_path, tiny_checkpoint):
    src, _ = tiny_checkpoint("llama")
    model = AutoModelForCausalLM.from_pretrained(src, quantization_config=OneBitConfig())
    out = tmp_path / "q"
    model.save_pretrained(out)
    return out


def rewrite(folder, mutate, metadata=None):
    path = os.path.join(folder, "model.safetensors")
    tensors = load_file(path)
    mutate(tensors)
    save_file(tensors, path, metadata=metadata or {"format": "pt", METADATA_KEY: "1"})


@pytest.mark.parametrize("tensor", ["scale_in", "scale_out", "weight"])
def test_missing_tensor_is_named(saved, tensor):
    rewrite(saved, lambda t: t.pop(f"{LAYER}.{tensor}"))
    with pytest.raises(CheckpointError, match=rf"{LAYER}\.{tensor}: missing"):
        AutoModelForCausalLM.from_pretrained(saved)


def test_wrong_shape_is_named(saved):
    def mutate(t):
        t[f"{LAYER}.weight"] = t[f"{LAYER}.weight"][:, :-1].contiguous()

    rewrite(saved, mutate)
    with pytest.raises(CheckpointError, match=rf"{LAYER}\.weight: the checkpoint holds U8"):
        AutoModelForCausalLM.from_pretrained(saved)


def test_float_weight_where_packed_bits_belong(saved):
    def mutate(t):
        t[f"{LAYER}.weight"] = torch.randn(72, 100)

    rewrite(saved, mutate)
    with pytest.raises(CheckpointError, match="F32.*expected U8"):
        AutoModelForCausalLM.from_pretrained(saved)


def test_wrong_scale_dtype(saved):
    rewrite(saved, lambda t: t.__setitem__(f"{LAYER}.scale_in", torch.ones(100, dtype=torch.int32)))
    with pytest.raises(CheckpointError, match=rf"{LAYER}\.scale_in"):
        AutoModelForCausalLM.from_pretrained(saved)


def test_truncated_file(saved):
    path = os.path.join(saved, "model.safetensors")
    size = os.path.getsize(path)
    with open(path, "r+b") as fh:
        fh.truncate(size - 1000)
    with pytest.raises(CheckpointError, match="truncated"):
        AutoModelForCausalLM.from_pretrained(saved)


def test_corrupted_header(saved):
    path = os.path.join(saved, "model.safetensors")
    with open(path, "r+b") as fh:
        fh.seek(8)
        fh.write(b"#garbage#")
    with pytest.raises(CheckpointError, match="corrupted"):
        AutoModelForCausalLM.from_pretrained(saved)


def test_unknown_format_version_in_file(saved):
    rewrite(saved, lambda t: None, metadata={"format": "pt", METADATA_KEY: "7"})
    with pytest.raises(CheckpointError, match="format_version: 7 is not supported"):
        AutoModelForCausalLM.from_pretrained(saved)


def test_unknown_format_version_in_config(saved):
    cfg_path = os.path.join(saved, "config.json")
    cfg = json.load(open(cfg_path))
    cfg["quantization_config"]["format_version"] = 2
    json.dump(cfg, open(cfg_path, "w"))
    with pytest.raises(ValueError, match="format_version: 2 is not supported"):
        AutoModelForCausalLM.from_pretrained(saved)
