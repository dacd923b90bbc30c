"""Where a CPU decode token of the LLaMA-2-7B-shaped 1-bit model goes: packed linears, output head, attention, the rest.

    python benchmarks/decode_split.py                   # 8 layers, int8 activations (the CPU default)
    python benchmarks/decode_split.py --layers 4 --act-bits 0
    python benchmarks/decode_split.py --torch-attention # transformers' sdpa instead of onebit_sdpa
    HF_ONEBIT_CPU_ISA=avx2 python benchmarks/decode_split.py   # our kernels on their AVX2 paths

Builds the model of ``benchmarks/decode.py`` (random packed sign bits, bf16 embeddings / output head / attention),
decodes greedily after a 16-token prompt, and times every packed linear's forward and the output head's forward with
module hooks, and the attention function (the scores-softmax-values step, without the projections, rotary embeddings
and cache update) through a timing wrapper registered with transformers' attention interface, per decode token as
``decode.decode_rate`` measures the rate (generate(n + 1) minus generate(1), divided by n; median of repeats). The
hooks cost time of their own, so the token time with hooks is printed beside the one without. The output head is a
FloatHead and the attention ``onebit_sdpa``, as hf_onebit's quantizer makes them (``--torch-head``: torch's
nn.Linear; ``--head-bits 16``: the FloatHead on its bf16 weights, not the int8 copy; ``--torch-attention``:
transformers' ``sdpa``). Also times the output head's GEMV alone at M = 1, torch's ``F.linear`` and FloatHead on the
bf16 weights and on the int8 copy, alternated (bytes read / time = the bandwidth each reaches), beside the machine's read bandwidth
(``kernels.cpu_read_bandwidth``: ``torch.sum`` over 1.5 GiB). One process; compare ratios from one run (the machines
are noisy).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from decode import LLAMA7B, build_llama, decode_rate


def add_timers(model, totals: dict) -> list:
    from hf_onebit import OneBitLinear

    def timer(key):
        def pre(module, args):
            module_starts[id(module)] = time.perf_counter()

        def post(module, args, out):
            totals[key] += time.perf_counter() - module_starts.pop(id(module))

        return pre, post

    module_starts: dict = {}
    handles = []
    for module in model.modules():
        key = ("packed linears" if isinstance(module, OneBitLinear)
               else "output head" if module is model.lm_head else None)
        if key:
            pre, post = timer(key)
            handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    return handles


def time_attention(model, totals: dict):
    """Run ``model``'s attention function (a registered one: ``sdpa``, ``onebit_sdpa``) through a wrapper that adds
    each call's time to ``totals["attention"]``, registered with transformers under ``timed_<name>`` (masks as for
    the wrapped one); returns a function that puts the model's own implementation back."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

    name = model.config._attn_implementation
    inner = ALL_ATTENTION_FUNCTIONS[name]

    def timed(*args, **kwargs):
        start = time.perf_counter()
        out = inner(*args, **kwargs)
        totals["attention"] += time.perf_counter() - start
        return out

    AttentionInterface.register(f"timed_{name}", timed)
    AttentionMaskInterface.register(f"timed_{name}", ALL_MASK_ATTENTION_FUNCTIONS[name])
    model.set_attn_implementation(f"timed_{name}")
    return lambda: model.set_attn_implementation(name)


def head_gemv(model, rounds: int = 5, calls: int = 4) -> dict:
    """``{path: (seconds per M = 1 call, bytes read per call)}`` for the output head's weight: torch's ``F.linear`` on
    the bf16 weights and hf_onebit's FloatHead on them (``head_bits=16``) and on their int8 copy (``head_bits=8``), in
    alternating rounds of ``calls`` calls each (median round per path)."""
    from hf_onebit.nn import FloatHead

    weight = model.lm_head.weight
    n, k = weight.shape
    x = torch.randn(1, 1, k, dtype=weight.dtype)
    linear = torch.nn.Linear(k, n, bias=False, device="meta")
    linear.weight = weight
    float_bytes = weight.numel() * weight.element_size()
    paths = {"torch F.linear": (lambda: torch.nn.functional.linear(x, weight), float_bytes),
             "FloatHead, bf16 weights": (FloatHead.from_linear(linear, 16), float_bytes),
             "FloatHead, int8 copy": (FloatHead.from_linear(linear, 8), n * k + 4 * n)}
    times = {name: [] for name in paths}
    with torch.inference_mode():
        for fn, _ in paths.values():
            fn(x) if isinstance(fn, FloatHead) else fn()
        for _ in range(rounds):
            for name, (fn, _) in paths.items():
                start = time.perf_counter()
                for _ in range(calls):
                    fn(x) if isinstance(fn, FloatHead) else fn()
                times[name].append((time.perf_counter() - start) / calls)
    return {name: (statistics.median(times[name]), nbytes) for name, (_, nbytes) in paths.items()}


def head_bits(model) -> str:
    bits = getattr(model.lm_head, "weight_bits", None)
    return "" if bits is None else f" (head_bits={bits})"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--tokens", type=int, default=32, help="decode tokens per timed generate")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--act-bits", type=int, choices=(0, 8), default=8)
    p.add_argument("--torch-head", action="store_true",
                   help="the output head is torch's nn.Linear (default: FloatHead, as hf_onebit's quantizer makes it)")
    p.add_argument("--head-bits", type=int, choices=(16, 8), default=8,
                   help="what the FloatHead reads on decode calls: its bf16 weights (16) or an int8 copy (8, default)")
    p.add_argument("--torch-attention", action="store_true",
                   help="attention on transformers' sdpa (default: onebit_sdpa, as hf_onebit's quantizer sets it)")
    args = p.parse_args(argv)
    if args.layers < 1 or args.tokens < 1 or args.repeats < 1:
        p.error(f"--layers, --tokens, --repeats: got {args.layers}, {args.tokens}, {args.repeats}; allowed: >= 1")

    policy = os.environ.get("OMP_WAIT_POLICY", "default (spinning)")  # the one libgomp read when torch loaded
    from hf_onebit import OneBitLinear
    from hf_onebit.ops import cpu
    from kernels import cpu_read_bandwidth  # the kernel benchmark's measurement (same folder)

    model = build_llama(args.layers, True, torch_head=args.torch_head, torch_attention=args.torch_attention,
                        head_bits=args.head_bits)
    for module in model.modules():
        if isinstance(module, OneBitLinear):
            module.act_bits = args.act_bits
    vocab = LLAMA7B["vocab_size"]
    plain = 1 / decode_rate(model, args.tokens, args.repeats, vocab)
    parts = {"packed linears": 0.0, "output head": 0.0, "attention": 0.0}
    attention = model.config._attn_implementation
    handles, restore = add_timers(model, parts), time_attention(model, parts)
    hooked = 1 / decode_rate(model, args.tokens, args.repeats, vocab, parts=parts)
    for handle in handles:
        handle.remove()
    restore()
    heads = head_gemv(model)
    bandwidth = cpu_read_bandwidth()
    print(f"{args.layers} layers, act_bits={args.act_bits}, kernels {cpu.active_isa_name()}, "
          f"{torch.get_num_threads()} threads, OMP_WAIT_POLICY {policy}, output head "
          f"{type(model.lm_head).__name__}{head_bits(model)}, attention {attention}\n")
    print("| part of a decode token | ms | share |")
    print("|---|---|---|")
    for key, value in parts.items():
        print(f"| {key} | {value * 1e3:.2f} | {value / hooked:.0%} |")
    rest = hooked - sum(parts.values())
    print(f"| everything else (norms, rotary embeddings, KV cache, sampling, hooks) | {rest * 1e3:.2f} "
          f"| {rest / hooked:.0%} |")
    print(f"| token, with the hooks | {hooked * 1e3:.2f} | 100% |")
    print(f"| token, without the hooks | {plain * 1e3:.2f} | |")
    print(f"\noutput head GEMV alone ({tuple(model.lm_head.weight.shape)}, {model.lm_head.weight.dtype}, M = 1); "
          f"read bandwidth {bandwidth / 1e9:.1f} GB/s\n")
    print("| path | ms | MB read | GB/s | vs torch |")
    print("|---|---|---|---|---|")
    for name, (seconds, nbytes) in heads.items():
        print(f"| {name} | {seconds * 1e3:.2f} | {nbytes / 1e6:.1f} | {nbytes / seconds / 1e9:.1f} | "
              f"{heads['torch F.linear'][0] / seconds:.2f}x |")


if __name__ == "__main__":
    main()
