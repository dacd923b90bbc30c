"""Decode speed of the 1-bit LLaMA-2-7B-shaped model on transformers' dynamic and static KV caches, by length.

    python benchmarks/kv_cache.py                          # 8 layers, 64 and 512 new tokens
    python benchmarks/kv_cache.py --layers 32 --lengths 64 256 1024

transformers' default cache (``DynamicCache``) appends each step's keys and values with ``torch.cat``: every decoded
token copies the whole cache of every layer once more, a cost that grows with the length generated. The static
cache (``generate(..., cache_implementation="static")``) preallocates the cache for ``max_new_tokens`` and writes each
step in place; the decode-attention kernel (``onebit_sdpa``) skips the masked, not yet written rows. This script
builds the model of ``benchmarks/decode.py`` (random packed weights, int8 activations, the int8 output head, the
defaults of a loaded model), and for each length decodes that many new tokens after a 16-token prompt on both caches
in alternation; a rate is ``(n - 1) / (time(generate(n)) - time(generate(1)))`` (prefill excluded), median of
``--repeats``. One process; compare the two caches within one run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from decode import LLAMA7B, PROMPT_TOKENS, build_llama, generation_config

CACHES = ("dynamic", "static")


def rates(model, lengths, repeats: int) -> dict:
    """``{(length, cache): tokens per second}``."""
    configs = {cache: generation_config(model, cache) for cache in CACHES}  # exactly n new tokens, greedy
    prompt = torch.randint(0, model.config.vocab_size, (1, PROMPT_TOKENS), generator=torch.Generator().manual_seed(0))

    def generate(n: int, cache: str) -> float:
        with torch.inference_mode():
            start = time.perf_counter()
            configs[cache].max_new_tokens = n
            out = model.generate(prompt, generation_config=configs[cache])
            elapsed = time.perf_counter() - start
        assert out.shape[1] == PROMPT_TOKENS + n
        return elapsed

    for cache in CACHES:
        generate(4, cache)  # warm-up: kernel library, int8 head copy, allocator
    samples = {(n, cache): [] for n in lengths for cache in CACHES}
    for _ in range(repeats):
        for n in lengths:
            for cache in CACHES:
                first = generate(1, cache)
                samples[(n, cache)].append((n - 1) / max(generate(n, cache) - first, 1e-9))
    return {key: statistics.median(values) for key, values in samples.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--lengths", type=int, nargs="+", default=[64, 512], help="new tokens per generate")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    if args.layers < 1 or args.repeats < 1 or min(args.lengths) < 2:
        p.error(f"--layers, --repeats >= 1 and --lengths >= 2: got {args.layers}, {args.repeats}, {args.lengths}")
    if PROMPT_TOKENS + max(args.lengths) > LLAMA7B["max_position_embeddings"]:
        p.error(f"--lengths: at most {LLAMA7B['max_position_embeddings'] - PROMPT_TOKENS} new tokens")
    from hf_onebit.ops import cpu

    model = build_llama(args.layers, True)
    result = rates(model, args.lengths, args.repeats)
    print(f"{args.layers} layers, int8 activations, kernels {cpu.active_isa_name()}, {torch.get_num_threads()} threads, "
          f"attention {model.config._attn_implementation}\n")
    print("| new tokens | dynamic cache tok/s | static cache tok/s | static vs dynamic |")
    print("|---|---|---|---|")
    for n in args.lengths:
        dynamic, static = result[(n, "dynamic")], result[(n, "static")]
        print(f"| {n} | {dynamic:.2f} | {static:.2f} | {static / dynamic:.2f}x |")


if __name__ == "__main__":
    main()
