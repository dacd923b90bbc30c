"""Decode tokens/s of a LLaMA-2-7B-shaped model (random weights): bf16 vs 1-bit (Triton GEMV), static cache, CUDA graphs.

    python benchmarks/decode_cuda.py [--layers 32] [--steps 128] [--cache 512] [--weights binary|ternary|both]
                                     [--act-bits 0 8] [--compile]

The bf16 model is measured first; then every linear layer of the decoder blocks is replaced in place by a packed
``OneBitLinear`` with random sign bits (embeddings, norms and lm_head stay bf16, as in a real 1-bit checkpoint) and
measured again. One decode step (forward of one token + greedy pick of the next) is captured in a CUDA graph and
replayed ``--steps`` times; tokens/s = steps / elapsed GPU time. Eager tokens/s (no graph) are printed for reference.
``--weights ternary`` packs random 2-bit ternary codes (``weight_format="ternary"``, Triton ternary kernels) instead of
sign bits; ``both`` measures the binary model, then the same model with ternary layers, next to the same bf16 run.
``--act-bits 0 8`` measures each packed model with float and with int8 activations (``act_bits=8``).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from hf_onebit.integration.compat import cache_kwargs  # noqa: E402


def llama2_7b_config(layers: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=layers, num_attention_heads=32,
        num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5,
    )


def build_model(layers: int):
    from transformers import LlamaForCausalLM

    config = llama2_7b_config(layers)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
    return model.eval()


def random_packed(shape, weight_format: str, device="cuda") -> torch.Tensor:
    """Random packed weights: any byte for sign bits; for ternary, 2-bit codes 0, 1, 2 (-1, 0, +1) uniformly."""
    if weight_format == "ternary":
        codes = torch.randint(0, 3, (*shape, 4), dtype=torch.uint8, device=device)
        shifts = torch.arange(0, 8, 2, dtype=torch.uint8, device=device)
        return codes.bitwise_left_shift(shifts).sum(-1, dtype=torch.uint8)
    return torch.randint(0, 256, shape, dtype=torch.uint8, device=device)


def binarize_(model, weight_format: str = "binary", device="cuda", act_bits: int = 0) -> int:
    """Replace each decoder-block ``nn.Linear`` (or OneBitLinear) by a packed OneBitLinear with random weights in
    ``weight_format`` and ``act_bits`` activations; returns how many."""
    from hf_onebit import OneBitLinear

    count = 0
    for block in model.model.layers:
        for parent in block.modules():
            for name, child in list(parent.named_children()):
                if isinstance(child, (torch.nn.Linear, OneBitLinear)):
                    scale = child.weight.float().abs().mean().item() if isinstance(child, torch.nn.Linear) else None
                    options = {} if weight_format == "binary" else {"weight_format": weight_format}
                    layer = OneBitLinear(child.in_features, child.out_features, bias=child.bias is not None,
                                         scale_dtype=torch.bfloat16, device=device, dtype=torch.bfloat16,
                                         act_bits=act_bits, **options)
                    layer.weight.data = random_packed(layer.weight.shape, weight_format, device)
                    layer.scale_in.data.uniform_(0.5, 1.5)
                    layer.scale_out.data.copy_(child.scale_out.data if scale is None else torch.full_like(
                        layer.scale_out, scale))
                    setattr(parent, name, layer)
                    count += 1
    if device == "cuda":
        torch.cuda.empty_cache()
    return count


class Decoder:
    """One greedy decode step with a static cache, optionally captured in a CUDA graph."""

    def __init__(self, model, cache_len: int):
        from transformers import StaticCache

        self.model = model
        self.cache = StaticCache(config=model.config, max_cache_len=cache_len)
        self.ids = torch.zeros(1, 1, dtype=torch.long, device="cuda")
        self.pos = torch.zeros(1, dtype=torch.long, device="cuda")
        self.graph = None

    @torch.no_grad()
    def step(self):
        logits = self.model(input_ids=self.ids, cache_position=self.pos, position_ids=self.pos.view(1, 1),
                            use_cache=True, **cache_kwargs(self.model, self.cache)).logits
        self.ids.copy_(logits[:, -1:].argmax(-1))
        self.pos.add_(1)

    def reset(self):
        self.pos.zero_()
        self.ids.zero_()

    def capture(self):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):  # warm-up: lazy cache allocation, Triton compilation, cached sign words
                self.step()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.step()

    def tokens_per_s(self, steps: int, graph: bool) -> float:
        self.reset()
        run = self.graph.replay if graph else self.step
        for _ in range(3):
            run()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t0 = time.perf_counter()
        start.record()
        for _ in range(steps):
            run()
        end.record()
        torch.cuda.synchronize()
        gpu = start.elapsed_time(end) / 1e3
        wall = time.perf_counter() - t0
        return steps / max(gpu, wall)


def _graphed(model, steps: int, cache_len: int):
    decoder = Decoder(model, cache_len)
    try:
        decoder.capture()
        return decoder.tokens_per_s(steps, graph=True), None
    except Exception as err:  # noqa: BLE001 - report honestly, keep the other figures
        return None, f"{type(err).__name__}: {str(err)[:200]}"
    finally:
        del decoder
        torch.cuda.empty_cache()


def measure(model, label: str, steps: int, cache_len: int, compile_too: bool, out=print) -> dict:
    result = {"label": label, "eager": Decoder(model, cache_len).tokens_per_s(min(steps, 32), graph=False)}
    result["graph"], error = _graphed(model, steps, cache_len)
    line = f"{label}: eager {result['eager']:.1f} tok/s, CUDA graph " + (
        f"{result['graph']:.1f} tok/s" if result["graph"] else f"failed ({error})")
    result["compiled"] = None
    if compile_too:
        # inductor fuses the norms, rotary embedding and residual adds; the binary op stays an opaque custom op
        torch._dynamo.reset()
        eager_forward = model.forward
        model.forward = torch.compile(eager_forward, dynamic=False)
        t0 = time.perf_counter()
        result["compiled"], error = _graphed(model, steps, cache_len)
        model.forward = eager_forward
        line += f", torch.compile + CUDA graph " + (
            f"{result['compiled']:.1f} tok/s (compile+capture {time.perf_counter() - t0:.0f} s)"
            if result["compiled"] else f"failed ({error})")
    out(line)
    return result


def weight_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.model.layers.parameters())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--cache", type=int, default=512, help="static cache length (attention covers all of it)")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile(forward) + CUDA graph")
    parser.add_argument("--weights", choices=("binary", "ternary", "both"), default="binary",
                        help="packed format of the decoder-block layers: sign bits, 2-bit ternary codes, or both")
    parser.add_argument("--act-bits", type=int, nargs="+", choices=(0, 8), default=[0],
                        help="activation precision(s) of the 1-bit layers: 0 (float), 8 (int8), or both (0 8)")
    args = parser.parse_args(argv)
    formats = ("binary", "ternary") if args.weights == "both" else (args.weights,)
    if not torch.cuda.is_available():
        sys.exit("benchmarks/decode_cuda.py: no CUDA device")
    import hf_onebit  # noqa: F401

    out = print
    out(f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}; LLaMA-2-7B shape, {args.layers} layers, "
        f"static cache {args.cache}, {args.steps} greedy steps, batch 1")
    model = build_model(args.layers)
    bf16_bytes = weight_bytes(model)
    dense = measure(model, "bf16", args.steps, args.cache, args.compile, out)
    packed = []
    for weight_format, act_bits in [(f, a) for f in formats for a in args.act_bits]:
        n = binarize_(model, weight_format, act_bits=act_bits)
        name = ("1-bit" if weight_format == "binary" else "ternary (2-bit)") + (" a8" if act_bits else "")
        packed.append(measure(model, f"{name} ({n} OneBitLinear, Triton)", args.steps, args.cache, args.compile, out))
        out(f"decoder-block weights: bf16 {bf16_bytes / 2**30:.2f} GiB, {name} {weight_bytes(model) / 2**30:.2f} GiB "
            f"(+ cached {'sign' if weight_format == 'binary' else 'code'} words of the same size); embeddings and "
            "lm_head bf16 in both")
    out("")
    fmt = lambda v: "not run" if v is None else f"{v:.1f}"  # noqa: E731
    out("| model | eager tok/s | CUDA graph tok/s | torch.compile + CUDA graph tok/s |")
    out("|---|---|---|---|")
    for r in (dense, *packed):
        out(f"| {r['label']} | {r['eager']:.1f} | {fmt(r['graph'])} | {fmt(r['compiled'])} |")
    for r in packed:
        for key, what in (("eager", "eager"), ("graph", "CUDA graph"), ("compiled", "torch.compile + CUDA graph")):
            if dense[key] and r[key]:
                out(f"{r['label'].split(' (')[0]} / bf16 decode speed ({what}): {r[key] / dense[key]:.2f}x")


if __name__ == "__main__":
    main()
