"""What the int8 output head (``OneBitConfig.head_bits=8``, the default) costs in quality and saves in time.

    python benchmarks/head_int8.py                 # SmolLM2-135M's head on the held-out test split + GEMV times
    python benchmarks/head_int8.py --split val --windows 4
    python benchmarks/head_int8.py --no-quality --decode --layers 32   # + whole-model decode with either head

Quality: SmolLM2-135M-Instruct in bf16 (the float teacher: its tied head is the one a 1-bit SmolLM2 keeps) runs each
held-out window once; its final hidden states go through the head twice, as a decode call computes it (products and
sums in float32, one rounding to bf16): from the bf16 weights (``head_bits=16``) and from their int8 copy with one
scale per row (``head_bits=8``, :func:`hf_onebit.ops.cpu.gemv.int8_linear_reference`). Prints per domain the
perplexity through each head, their ratio, the mean KL(bf16 head || int8 head) per token and how often the two agree
on the most likely next token.

Time: the head's GEMV at M = 1 for SmolLM2's head (49152 x 576) and a LLaMA-2-7B-shaped one (32000 x 4096, random
bf16 weights): torch's ``F.linear``, FloatHead on the bf16 weights and on the int8 copy, in alternating rounds (median
round), with the bytes each reads per call and the machine's read bandwidth.

Decode (``--decode``): greedy decoding speed (``benchmarks/decode.py``'s ``decode_rate``: 32 new tokens after a
16-token prompt, prefill excluded) of the 1-bit SmolLM2-135M (real weights, ``quantize_`` without distillation, bf16)
and of the 1-bit LLaMA-2-7B-shaped model of ``decode.py`` (``--layers``, random packed weights), each with its head
switched between the int8 copy and the bf16 weights (``FloatHead.weight_bits``) in ``--decode-rounds`` alternating
rounds; int8 activations and ``onebit_sdpa`` (the defaults). One process; compare ratios within one run.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F


def head_quality(split: str, windows: int | None) -> list[dict]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_onebit.eval.heldout import heldout_windows
    from hf_onebit.fixtures.real_model import smollm2_checkpoint
    from hf_onebit.ops.cpu.gemv import int8_linear_reference, quantize_rows_int8

    path = smollm2_checkpoint()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    weight = model.get_output_embeddings().weight.detach()
    q, scale = quantize_rows_int8(weight)
    rows = []
    with torch.inference_mode():
        for domain, ids in heldout_windows(tok, split, max_windows=windows).items():
            nll16 = nll8 = kl = agree = 0.0
            count = 0
            for row in ids:
                hidden = model.model(input_ids=row[:-1].unsqueeze(0)).last_hidden_state[0]
                logits16 = F.linear(hidden.float(), weight.float()).bfloat16().float()
                logits8 = int8_linear_reference(hidden, q, scale).float()
                target = row[1:]
                nll16 += F.cross_entropy(logits16, target, reduction="sum").item()
                nll8 += F.cross_entropy(logits8, target, reduction="sum").item()
                logp16, logp8 = logits16.log_softmax(-1), logits8.log_softmax(-1)
                kl += (logp16.exp() * (logp16 - logp8)).sum().item()
                agree += (logits16.argmax(-1) == logits8.argmax(-1)).sum().item()
                count += target.numel()
            rows.append({"domain": domain, "ppl16": math.exp(nll16 / count), "ppl8": math.exp(nll8 / count),
                         "kl": kl / count, "agree": agree / count, "tokens": count})
    return rows


def head_times(rounds: int, calls: int) -> list[tuple]:
    from hf_onebit.nn import FloatHead

    out = []
    gen = torch.Generator().manual_seed(0)
    for label, (n, k) in (("SmolLM2-135M", (49152, 576)), ("LLaMA-2-7B-shaped", (32000, 4096))):
        linear = torch.nn.Linear(k, n, bias=False, dtype=torch.bfloat16)
        with torch.no_grad():
            linear.weight.copy_((torch.randn(n, k, generator=gen) * 0.02).bfloat16())
        x = torch.randn(1, 1, k, generator=gen).bfloat16()
        bf16_head, int8_head = FloatHead.from_linear(linear, 16), FloatHead.from_linear(linear, 8)
        paths = {"torch F.linear": (lambda: F.linear(x, linear.weight), 2 * n * k),
                 "FloatHead, bf16 weights (head_bits=16)": (lambda: bf16_head(x), 2 * n * k),
                 "FloatHead, int8 copy (head_bits=8)": (lambda: int8_head(x), n * k + 4 * n)}
        times = {name: [] for name in paths}
        with torch.inference_mode():
            for fn, _ in paths.values():
                fn()
            for _ in range(rounds):
                for name, (fn, _) in paths.items():
                    start = time.perf_counter()
                    for _ in range(calls):
                        fn()
                    times[name].append((time.perf_counter() - start) / calls)
        for name, (_, nbytes) in paths.items():
            out.append((label, (n, k), name, statistics.median(times[name]), nbytes))
    return out


def decode_ab(layers: int, rounds: int) -> list[tuple]:
    """``[(model, median tok/s with the int8 copy, median with the bf16 weights, each round's rates)]``."""
    from transformers import AutoModelForCausalLM

    from decode import LLAMA7B, build_llama, decode_rate
    from hf_onebit import OneBitConfig, quantize_
    from hf_onebit.fixtures.real_model import smollm2_checkpoint

    smollm2 = AutoModelForCausalLM.from_pretrained(smollm2_checkpoint(), dtype=torch.bfloat16).eval()
    quantize_(smollm2, OneBitConfig(), progress=False)
    models = (("SmolLM2-135M, 1-bit", smollm2, smollm2.config.vocab_size),
              (f"LLaMA-2-7B-shaped, 1-bit, {layers} layers", build_llama(layers, True), LLAMA7B["vocab_size"]))
    out = []
    for label, model, vocab in models:
        rates = {8: [], 16: []}
        for _ in range(rounds):
            for bits in (8, 16):
                model.lm_head.weight_bits = bits
                rates[bits].append(decode_rate(model, 32, 2, vocab))
        out.append((label, statistics.median(rates[8]), statistics.median(rates[16]), rates))
        del model
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", choices=("val", "test"), default="test")
    p.add_argument("--windows", type=int, default=None, help="windows per domain (default: the split's default)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--calls", type=int, default=8)
    p.add_argument("--no-quality", action="store_true", help="leave out the perplexity table")
    p.add_argument("--decode", action="store_true", help="add whole-model decode with either head (see above)")
    p.add_argument("--layers", type=int, default=8, help="--decode: layers of the 7B-shaped model")
    p.add_argument("--decode-rounds", type=int, default=4, help="--decode: alternating rounds per model")
    args = p.parse_args(argv)
    if args.windows is not None and args.windows < 1:
        p.error(f"--windows: got {args.windows}; allowed: an integer >= 1")
    if min(args.rounds, args.calls, args.layers, args.decode_rounds) < 1:
        p.error(f"--rounds, --calls, --layers, --decode-rounds: got {args.rounds}, {args.calls}, {args.layers}, "
                f"{args.decode_rounds}; allowed: >= 1")
    from hf_onebit.ops import cpu
    from kernels import cpu_read_bandwidth  # the kernel benchmark's measurement (same folder)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, kernels {cpu.active_isa_name()}\n")
    if not args.no_quality:
        rows = head_quality(args.split, args.windows)
        print(f"SmolLM2-135M-Instruct (bf16) through its head, held-out {args.split} split, 512-token windows\n")
        print("| domain | tokens | ppl, bf16 weights | ppl, int8 copy | ratio | KL per token (nats) | same top-1 |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['domain']} | {r['tokens']} | {r['ppl16']:.3f} | {r['ppl8']:.3f} | "
                  f"{r['ppl8'] / r['ppl16']:.4f} | {r['kl']:.2e} | {r['agree']:.2%} |")
        g16 = math.exp(sum(math.log(r["ppl16"]) for r in rows) / len(rows))
        g8 = math.exp(sum(math.log(r["ppl8"]) for r in rows) / len(rows))
        print(f"| geomean | | {g16:.3f} | {g8:.3f} | {g8 / g16:.4f} | | |\n")
    bandwidth = cpu_read_bandwidth()
    print(f"output head GEMV at M = 1 (median of {args.rounds} rounds of {args.calls} calls); read bandwidth "
          f"{bandwidth / 1e9:.1f} GB/s\n")
    print("| head | path | ms | MB read | GB/s | vs torch |")
    print("|---|---|---|---|---|---|")
    times = head_times(args.rounds, args.calls)
    base = {label: seconds for label, _, name, seconds, _ in times if name == "torch F.linear"}
    for label, shape, name, seconds, nbytes in times:
        print(f"| {label} {shape[0]} x {shape[1]} | {name} | {seconds * 1e3:.3f} | {nbytes / 1e6:.1f} | "
              f"{nbytes / seconds / 1e9:.1f} | {base[label] / seconds:.2f}x |")
    if args.decode:
        print(f"\ngreedy decode, 32 new tokens, median of {args.decode_rounds} alternating rounds\n")
        print("| model | tok/s, int8 copy | tok/s, bf16 weights | int8 vs bf16 | rounds (int8 / bf16) |")
        print("|---|---|---|---|---|")
        for label, int8, bf16, rates in decode_ab(args.layers, args.decode_rounds):
            rounds = " / ".join(" ".join(f"{r:.1f}" for r in rates[b]) for b in (8, 16))
            print(f"| {label} | {int8:.2f} | {bf16:.2f} | {int8 / bf16:.2f}x | {rounds} |")


if __name__ == "__main__":
    main()
