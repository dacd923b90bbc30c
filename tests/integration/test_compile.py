"""torch.compile and generate with a static cache on a 1-bit model (CPU)."""

import pytest
import torch
from transformers import AutoModelForCausalLM, CompileConfig

import hf_onebit

from ecosystem_helpers import onebit_checkpoint


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = onebit_checkpoint(str(tmp_path_factory.mktemp("compile")), layers=1)[1]
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def test_quantizer_says_compileable(model):
    assert model.hf_quantizer.is_compileable is True


def test_inductor_fullgraph_matches_eager(model):
    torch._dynamo.reset()
    ids = torch.randint(0, 256, (2, 10))
    with torch.no_grad():
        eager = model(ids).logits
        compiled = torch.compile(model, backend="inductor", fullgraph=True)(ids).logits
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


def test_generate_with_static_cache_and_compile(model):
    ids = torch.randint(0, 256, (1, 6))
    dynamic = model.generate(ids, max_new_tokens=6, do_sample=False)
    static = model.generate(ids, max_new_tokens=6, do_sample=False, cache_implementation="static")
    assert torch.equal(dynamic, static)

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    config = CompileConfig(fullgraph=True, backend="aot_eager", mode=None)
    config._compile_all_devices = True  # generate auto-compiles only on GPUs unless told otherwise
    compiled = model.generate(ids, max_new_tokens=6, do_sample=False, cache_implementation="static",
                              compile_config=config)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # the decode step really was compiled
    assert torch.equal(compiled, dynamic)
