"""Round trip into stock llama.cpp (llama-cpp-python, in the test extra): an exported tiny model loads and its logits
match ours. llama.cpp multiplies 1-bit / ternary rows by activations it rounds to 8 bits (Q8_0: one scale per 32
values for Q1_0; Q8_K per 256 for TQ1_0 / TQ2_0) and keeps the KV cache in float16, so the comparison is against our
float function with a tolerance on the logits, and on the next-token choice."""

import numpy as np
import pytest
import torch

import hf_onebit
from hf_onebit import OneBitConfig
from hf_onebit.fixtures.tiny_model import tiny_llama, tiny_qwen2
from hf_onebit.interop.gguf import export_gguf
from hf_onebit.interop.gguf.fold import fold_llama, folded_model
from gguf_helpers import tokenizer_with_merges

import llama_cpp  # noqa: E402  (in the test extra: scripts/setup.sh builds it once and pip caches the wheel)


def _tied_model(weight_format, seed=0, make=tiny_llama):
    from test_gguf_fold import _tie

    torch.manual_seed(seed)
    model = make(seed=seed, hidden=128, intermediate=256, head_dim=32, vocab_size=260)
    hf_onebit.quantize_(model, OneBitConfig(weight_format=weight_format))
    _tie(model)
    return model


def _llama_logits(path, ids):
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, n_threads=2, logits_all=True, verbose=False)
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


@pytest.mark.parametrize("weight_format,qtype,make", [
    ("binary", "Q1_0", tiny_llama), ("ternary", "TQ2_0", tiny_llama), ("ternary", "TQ1_0", tiny_llama),
    ("binary", "Q1_0", tiny_qwen2), ("ternary", "TQ2_0", tiny_qwen2),  # llama.cpp's qwen2 graph, q/k/v biases
], ids=["llama-Q1_0", "llama-TQ2_0", "llama-TQ1_0", "qwen2-Q1_0", "qwen2-TQ2_0"])
def test_llama_cpp_runs_the_exported_model(tmp_path, weight_format, qtype, make):
    model = _tied_model(weight_format, make=make)
    path = tmp_path / f"tiny-{qtype}.gguf"
    summary = export_gguf(model, tokenizer_with_merges(), str(path), qtype=qtype)
    assert summary.report.exact and summary.qtype == qtype
    ids = torch.randint(260, (40,), generator=torch.Generator().manual_seed(1)).tolist()
    theirs = _llama_logits(path, ids)
    with torch.no_grad():
        ours = model(torch.tensor([ids])).logits[0].numpy()
        stored = folded_model(fold_llama(model, 128 if qtype == "Q1_0" else 256))(torch.tensor([ids])).logits[0]
    scale = np.abs(ours).max()
    err_stored = np.abs(theirs - stored.numpy()).max() / scale
    err_ours = np.abs(theirs - ours).max() / scale
    # 8-bit activations + float16 KV cache + float16 row scales: measured 0.7-0.9 % of the largest logit here
    print(f"{qtype}: max |llama.cpp - folded| {err_stored:.4f}, |llama.cpp - ours| {err_ours:.4f} of max |logit|")
    assert err_stored < 0.02 and err_ours < 0.02, (err_stored, err_ours)
    assert (theirs.argmax(-1) == ours.argmax(-1)).mean() >= 0.9
