"""llama.cpp as the peer of the CPU benchmarks: random-weight LLaMA-2-7B-shaped GGUF files and their decode speed.

Used by ``benchmarks/decode.py`` (its llama.cpp rows). :func:`write_f16_gguf` writes a LLaMA-2-7B-shaped model with
``layers`` blocks and random float16 weights (the same shapes and value range as decode.py's dense model) with the
``gguf`` package; :func:`quantize` turns it into another type with llama.cpp's own quantizer (llama-cpp-python's
``llama_model_quantize``), with the output head in F16 or Q8_0 (:data:`HEAD_TYPES`: the counterparts of hf_onebit's
``head_bits`` 16 and 8) and the token embeddings in F16, so that the rows differ in their block layers only. :func:`decode_rate` measures greedy decoding in llama.cpp the way decode.py measures
transformers: ``new_tokens / (time(prompt + new_tokens + 1) - time(prompt + 1))``, median of repeats.

The vocabulary is a placeholder of LLaMA-2's size (32,000 entries: the three special tokens, the 256 byte tokens,
numbered fillers): token ids go in directly, nothing is tokenized.
"""

from __future__ import annotations

import ctypes
import os
import statistics
import time

import numpy as np

from llama_cpp_ops import GGML_TYPES

LLAMA7B = dict(hidden=4096, intermediate=11008, heads=32, kv_heads=32, vocab=32000, context=2048, rope_theta=10000.0,
               eps=1e-5)
#: the llama.cpp types compared: at most 2 bits per weight, plus Q4_0 and the F16 source
TYPES = tuple(GGML_TYPES)
#: llama.cpp's type for the output head at each of hf_onebit's ``head_bits``
HEAD_TYPES = {16: "F16", 8: "Q8_0"}


def _vocab(size: int) -> tuple[list[str], list[float], list[int]]:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256  # UNKNOWN, CONTROL, CONTROL, BYTE
    tokens += [f"\u2581t{i}" for i in range(size - len(tokens))]
    types += [1] * (size - len(types))  # NORMAL
    return tokens, [-float(i) for i in range(size)], types


def write_f16_gguf(path: str, layers: int, seed: int = 0) -> int:
    """Write the F16 model; returns the file's size in bytes."""
    import gguf

    c = LLAMA7B
    rng = np.random.default_rng(seed)

    def uniform(*shape):  # (rows, columns) as GGUF stores a linear layer: out x in
        return rng.uniform(-0.03, 0.03, size=shape).astype(np.float16)

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name(f"random LLaMA-2-7B-shaped, {layers} layers")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_block_count(layers)
    writer.add_context_length(c["context"])
    writer.add_embedding_length(c["hidden"])
    writer.add_feed_forward_length(c["intermediate"])
    writer.add_head_count(c["heads"])
    writer.add_head_count_kv(c["kv_heads"])
    writer.add_rope_dimension_count(c["hidden"] // c["heads"])
    writer.add_rope_freq_base(c["rope_theta"])
    writer.add_layer_norm_rms_eps(c["eps"])
    writer.add_vocab_size(c["vocab"])
    tokens, scores, types = _vocab(c["vocab"])
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    h, f = c["hidden"], c["intermediate"]
    writer.add_tensor("token_embd.weight", rng.normal(0, 0.02, size=(c["vocab"], h)).astype(np.float16))
    writer.add_tensor("output_norm.weight", np.ones(h, dtype=np.float32))
    writer.add_tensor("output.weight", uniform(c["vocab"], h))
    for i in range(layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(h, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(h, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"blk.{i}.{name}.weight", uniform(h, h))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", uniform(f, h))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", uniform(f, h))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", uniform(h, f))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return os.path.getsize(path)


def quantize(source: str, target: str, qtype: str, threads: int, head: str = "F16") -> int:
    """``source`` (F16) quantized to ``qtype`` by llama.cpp, the output head to ``head`` (a value of
    :data:`HEAD_TYPES`), the token embeddings kept F16; returns the target file's size in bytes."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{qtype}")
    params.nthread = threads
    params.output_tensor_type = getattr(llama_cpp, f"GGML_TYPE_{head}")
    params.token_embedding_type = llama_cpp.GGML_TYPE_F16
    status = llama_cpp.llama_model_quantize(source.encode(), target.encode(), ctypes.byref(params))
    if status != 0:
        raise RuntimeError(f"llama.cpp could not quantize {source} to {qtype} (status {status})")
    return os.path.getsize(target)


def decode_rate(path: str, new_tokens: int, repeats: int, threads: int, prompt_tokens: int = 16) -> float:
    """Tokens per second of greedy decoding in llama.cpp after a ``prompt_tokens`` prompt (prefill excluded)."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=path, n_ctx=prompt_tokens + new_tokens + 8, n_threads=threads,
                          n_threads_batch=threads, n_batch=prompt_tokens, logits_all=True, verbose=False)
    prompt = list(np.random.default_rng(0).integers(259, LLAMA7B["vocab"], prompt_tokens))

    def generate(n: int) -> float:
        llm.reset()
        start = time.perf_counter()
        llm.eval(prompt)
        for _ in range(n):
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            llm.eval([token])
        return time.perf_counter() - start

    generate(3)  # warm-up: pages, threads
    rates = []
    for _ in range(repeats):
        first = generate(1)
        full = generate(new_tokens + 1)
        rates.append(new_tokens / max(full - first, 1e-9))
    llm.close()
    return statistics.median(rates)
