"""Write an hf_onebit LLaMA-family model (LLaMA, Mistral, Qwen2) as a GGUF file that stock llama.cpp loads and runs.

    from hf_onebit.interop.gguf import export_gguf
    summary = export_gguf(model, tokenizer, "model-q1_0.gguf")            # binary -> Q1_0, ternary -> TQ2_0
    print(summary.table())

or ``hf-onebit export gguf MODEL_DIR OUT.gguf [--type TQ1_0] [--approximate]``.

What goes into the file:

* the block linear layers in the 1-bit / ternary type (:mod:`.blocks`), after :func:`~.fold.fold_llama` moved every
  ``g`` into llama.cpp's graph and padded the widths to whole blocks;
* the embeddings (and an untied output head) as F16, the RMSNorm weights as F32 - what llama.cpp's own converter
  stores for a model whose linear layers it quantizes;
* Qwen2's q/k/v biases as F32, as llama.cpp's converter stores them;
* llama.cpp's ``llama`` or ``qwen2`` hyper-parameters (the padded widths, the rescaled RMSNorm epsilon, the head size
  stated explicitly because the padded width over the head count is no longer it) and the tokenizer: a byte-level BPE
  vocabulary with its merges, special tokens and chat template, from the transformers tokenizer.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
import torch

from ...eval import format_table
from ...formats import get_format
from ...nn.linear import OneBitLinear
from . import blocks
from .fold import ATTN, MLP, ExportError, FoldReport, fold_llama

#: llama.cpp's tensor names for the HF layer names
NAMES = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
         "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
#: the type each weight format exports to by default (TQ2_0 decodes faster than TQ1_0 on CPUs; TQ1_0 is smaller)
DEFAULT_TYPE = {"binary": "Q1_0", "ternary": "TQ2_0"}
#: general.file_type (llama.cpp's LLAMA_FTYPE_MOSTLY_*) of each type
FILE_TYPES = {"Q1_0": "MOSTLY_Q1_0", "TQ1_0": "MOSTLY_TQ1_0", "TQ2_0": "MOSTLY_TQ2_0"}
#: the pre-tokenizer written when none is given, per llama.cpp architecture (``gpt-2``: the byte-level regex of a
#: plain ByteLevel pre-tokenizer; ``qwen2``: Qwen2's, which splits digits one by one)
DEFAULT_PRE = {"llama": "gpt-2", "qwen2": "qwen2"}


@dataclass
class ExportSummary:
    path: str
    qtype: str
    file_bytes: int
    bits_per_weight: float  # of the block linear layers as stored (padding included)
    unpadded_bits_per_weight: float  # the same bytes over the model's own weights
    report: FoldReport

    def table(self) -> str:
        r = self.report
        rows = [["file", f"{self.path} ({self.file_bytes / 2**20:.1f} MiB)"],
                ["linear layers", f"{self.qtype}, {self.bits_per_weight:.3f} bits per stored weight, "
                                  f"{self.unpadded_bits_per_weight:.3f} per weight of the model"],
                ["padding", f"hidden {r.hidden[0]} -> {r.hidden[1]}, heads {r.heads[0]} -> {r.heads[1]} "
                            f"(KV {r.kv_heads[0]} -> {r.kv_heads[1]}), MLP {r.intermediate[0]} -> {r.intermediate[1]}"],
                ["fold of g", "exact" if r.exact else
                 f"approximate in {len(r.errors)} layers (worst relative weight error {r.worst()[1]:.3g}, "
                 f"{r.worst()[0]})"]]
        return format_table(["GGUF export", ""], rows)


def weight_format_of(model) -> str:
    formats = {m.weight_format for m in model.modules() if isinstance(m, OneBitLinear)}
    if not formats:
        raise ExportError("model: has no OneBitLinear layers; load it with an hf_onebit quantization_config first")
    if len(formats) > 1:
        raise ExportError(f"model: mixes weight formats {sorted(formats)}; allowed: one format for all layers")
    return formats.pop()


def choose_type(weight_format: str, qtype: str | None) -> str:
    if qtype is None:
        return DEFAULT_TYPE[weight_format]
    qtype = qtype.upper()
    if qtype not in blocks.BLOCKS:
        raise ExportError(f"type: got {qtype!r}; allowed: {', '.join(blocks.BLOCKS)}")
    if get_format(weight_format).is_ternary and qtype not in blocks.TERNARY_TYPES:
        raise ExportError(f"type: {qtype} holds only -1 / +1; a ternary model needs {' or '.join(blocks.TERNARY_TYPES)}")
    return qtype


# ------------------------------------------------------------------------------------------------------ tokenizer
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED = 1, 3, 4  # llama.cpp's token types


def tokenizer_metadata(tokenizer, vocab_size: int) -> dict:
    """The GGUF tokenizer fields of a byte-level BPE transformers tokenizer (``tokenizer.json`` model type BPE)."""
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is None:
        raise ExportError("tokenizer: a fast (tokenizers) tokenizer is needed; got "
                          f"{type(tokenizer).__name__}")
    spec = json.loads(backend.to_str())
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        raise ExportError(f"tokenizer: model type {model.get('type')!r}; the exporter writes byte-level BPE "
                          "vocabularies (llama.cpp 'gpt2' tokenizer model)")
    vocab = model["vocab"]
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    size = max(vocab_size, max(vocab.values()) + 1, max(added, default=-1) + 1)
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [TOKEN_USER_DEFINED] * size  # ids the vocabulary does not name (padding of the embedding matrix)
    for text, i in vocab.items():
        tokens[i], types[i] = text, TOKEN_NORMAL
    for i, t in added.items():
        tokens[i], types[i] = t["content"], TOKEN_CONTROL if t.get("special") else TOKEN_USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    if not merges:
        raise ExportError("tokenizer: a BPE vocabulary without merges; llama.cpp's BPE tokenizer needs its merges")
    special = {}
    for name in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{name}_token_id", None)
        if token_id is not None:
            special[name] = int(token_id)
    return {"tokens": tokens, "types": types, "merges": merges, "special": special,
            "add_bos": bool(getattr(tokenizer, "add_bos_token", False)),
            "chat_template": getattr(tokenizer, "chat_template", None)}


# ------------------------------------------------------------------------------------------------------ writer
def export_gguf(model, tokenizer, path: str, qtype: str | None = None, approximate: bool = False,
                name: str | None = None, tokenizer_pre: str | None = None) -> ExportSummary:
    """Write ``model`` (an hf_onebit LLaMA, Mistral or Qwen2 model, packed or latent) and ``tokenizer`` to ``path``.

    ``qtype``: ``Q1_0`` (binary; the default for binary), ``TQ2_0`` (the default for ternary) or ``TQ1_0``.
    ``approximate``: accept a fold that is not exact (see :mod:`.fold`); the summary reports its error.
    ``tokenizer_pre``: llama.cpp's pre-tokenizer name; default :data:`DEFAULT_PRE` of the architecture (a model whose
    original GGUF names another, e.g. ``smollm``, can pass that).
    """
    import gguf

    qtype = choose_type(weight_format_of(model), qtype)
    size = blocks.block_size(qtype)
    tensors = fold_llama(model, size, approximate=approximate)
    c = tensors.config
    tok = tokenizer_metadata(tokenizer, c["vocab"])
    qenum = getattr(gguf.GGMLQuantizationType, qtype)

    writer = gguf.GGUFWriter(path, c["arch"])
    writer.add_name(name or getattr(model.config, "_name_or_path", None) or "hf_onebit model")
    writer.add_file_type(getattr(gguf.LlamaFileType, FILE_TYPES[qtype]))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_block_count(c["layers"])
    writer.add_context_length(c["context"])
    writer.add_embedding_length(c["hidden_padded"])
    writer.add_feed_forward_length(c["intermediate_padded"])
    writer.add_head_count(c["heads_padded"])
    writer.add_head_count_kv(c["kv_heads_padded"])
    writer.add_key_length(c["head_dim"])
    writer.add_value_length(c["head_dim"])
    writer.add_rope_dimension_count(c["head_dim"])
    writer.add_rope_freq_base(c["rope_theta"])
    writer.add_layer_norm_rms_eps(c["eps_padded"])
    writer.add_vocab_size(len(tok["tokens"]))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(tokenizer_pre or DEFAULT_PRE[c["arch"]])
    writer.add_token_list(tok["tokens"])
    writer.add_token_types(tok["types"])
    writer.add_token_merges(tok["merges"])
    for key, value in tok["special"].items():
        getattr(writer, f"add_{key}_token_id")(value)
    writer.add_add_bos_token(tok["add_bos"])
    if tok["chat_template"]:
        writer.add_chat_template(tok["chat_template"])

    def f16(t: torch.Tensor) -> np.ndarray:
        return t.to(torch.float16).numpy()

    def f32(t: torch.Tensor) -> np.ndarray:
        return t.to(torch.float32).numpy()

    writer.add_tensor("token_embd.weight", f16(tensors.embed))
    writer.add_tensor("output_norm.weight", f32(tensors.output_norm))
    if tensors.output is not None:
        writer.add_tensor("output.weight", f16(tensors.output))
    stored = 0
    for i, layer in enumerate(tensors.layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", f32(layer["attn_norm"]))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", f32(layer["ffn_norm"]))
        for hf_name in ATTN + MLP:
            q = layer[hf_name]
            writer.add_tensor(f"blk.{i}.{NAMES[hf_name]}.weight", blocks.encode(q.values, q.scales, qtype).numpy(),
                              raw_dtype=qenum)
            stored += q.values.numel()
            if f"{hf_name}.bias" in layer:
                writer.add_tensor(f"blk.{i}.{NAMES[hf_name]}.bias", f32(layer[f"{hf_name}.bias"]))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    per_block = blocks.BLOCKS[qtype]
    linear_bytes = stored // per_block[0] * per_block[1]
    own = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, OneBitLinear))
    return ExportSummary(path, qtype, os.path.getsize(path), 8 * linear_bytes / stored, 8 * linear_bytes / own,
                         tensors.report)
