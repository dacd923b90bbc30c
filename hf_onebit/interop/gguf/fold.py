"""A LLaMA-family hf_onebit model as llama.cpp's tensors: ``g`` folded into what llama.cpp multiplies anyway, the
dimensions padded to whole blocks, the q/k rows in llama.cpp's rotary order. No GGUF here: :mod:`.export` writes it.

Architectures (:data:`ARCHITECTURES`): LLaMA and Mistral become llama.cpp's ``llama`` graph (rotary pairs adjacent:
q/k rows permuted), Qwen2 its ``qwen2`` graph (rotary halves as in transformers: no permutation; q/k/v biases, kept
as float32 vectors).

A OneBitLinear computes ``y = ((x * g) @ V.T) * h`` (``V`` the values). A llama.cpp block type (Q1_0, TQ1_0, TQ2_0)
holds ``V`` and one scale per block of a row: ``h`` fits (every block of row ``i`` gets ``h[i]``), ``g`` - one float per
*input* - does not. It is moved, exactly, into the operation before the layer:

=============  ==============================================================================================
layer          where its ``g`` goes
=============  ==============================================================================================
q, k, v        the attention RMSNorm's weight - one vector for three layers: exact when their ``g`` are equal
gate, up       the MLP RMSNorm's weight - exact when their ``g`` are equal
down           ``up``'s ``h``: ``(silu(gate) * up) * g = silu(gate) * (up * g)`` - always exact
o              ``v``'s ``h`` (and ``v``'s bias), per key/value head: exact when the query heads sharing a KV head
               have equal ``g``
=============  ==============================================================================================

``OneBitConfig(tie_input_scales=True)`` keeps exactly those ``g`` equal while a model trains. For a model without it
the shared vectors are fitted (:func:`~hf_onebit.integration.tying.shared_scale`) and each row's ``h`` re-fitted to it; :class:`FoldReport` gives
every approximated layer's relative weight error, and :func:`fold_llama` refuses unless ``approximate=True``.

Padding (llama.cpp's types need whole blocks of 128 or 256 inputs per row):

* hidden size ``H -> H'``: zero columns in the embeddings, zero output rows in o and down, so the residual stream's
  extra dimensions stay 0; every RMSNorm then averages over ``H'``, which the weights (times ``sqrt(H / H')``) and
  the epsilon (times ``H / H'``) undo exactly;
* the attention width ``heads x head_dim``: whole dummy KV groups (a zero ``v`` head and its zero query heads), whose
  attention output is 0;
* the MLP width: zero ``gate``/``up`` rows (``silu(0) * 0 = 0``);
* biases (Qwen2's q/k/v): zeros for the padded rows.

The padded model computes the same function; the padding costs bits (reported by the exporter), not accuracy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ...nn.linear import OneBitLinear
from ...integration.model_shape import attention_head_dim
from ...integration.tying import layer_values, refit_rows, shared_scale

#: HF model type -> llama.cpp architecture whose graph computes it
ARCHITECTURES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}
ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
#: the layers with a bias in each llama.cpp architecture (every other layer must have none)
BIASED = {"llama": (), "qwen2": ("q_proj", "k_proj", "v_proj")}
MLP = ("gate_proj", "up_proj", "down_proj")


class ExportError(ValueError):
    """A model that cannot be exported as asked (the message names the layer or setting and what is allowed)."""


@dataclass
class Quantized:
    """A 1-bit / ternary tensor for llama.cpp: ``values`` (int8, ``(rows, inputs)``) times one scale per row."""

    values: torch.Tensor
    scales: torch.Tensor


@dataclass
class FoldReport:
    """What folding did: every approximated layer's relative weight error ``|W' - W| / |W|``, and the padding."""

    errors: dict = field(default_factory=dict)
    hidden: tuple = (0, 0)
    heads: tuple = (0, 0)
    kv_heads: tuple = (0, 0)
    intermediate: tuple = (0, 0)

    @property
    def exact(self) -> bool:
        return not self.errors

    def worst(self) -> tuple[str, float]:
        return max(self.errors.items(), key=lambda kv: kv[1]) if self.errors else ("", 0.0)


@dataclass
class LlamaTensors:
    """The model in llama.cpp's terms (HF names per layer; padded, folded, q/k rows permuted)."""

    config: dict
    embed: torch.Tensor  # (vocab, H')
    output: torch.Tensor | None  # (vocab, H') or None when tied to the embeddings
    output_norm: torch.Tensor
    #: per layer: {"attn_norm", "ffn_norm": float vectors, "q_proj", ...: Quantized, "q_proj.bias", ...: float vectors
    #: for the layers of ``BIASED[config["arch"]]``}
    layers: list
    report: FoldReport


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def layer_parts(module: OneBitLinear) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(values int8 (out, in), g float32, h float32)`` of a OneBitLinear in either form, ``g >= 0`` (a negative
    ``g[j]`` is moved into column ``j``'s signs: the same function)."""
    state = module.packed_state()
    values = layer_values(module)
    g = state["scale_in"].float().clone()
    h = state["scale_out"].float().clone()
    negative = g < 0
    values[:, negative] = -values[:, negative]
    g[negative] = -g[negative]
    return values, g, h


def _permute_rotary(rows: torch.Tensor, heads: int) -> torch.Tensor:
    """HF's rotary layout (each head's first half pairs with its second half) -> llama.cpp's (adjacent pairs)."""
    per_head = rows.shape[0] // heads
    return rows.reshape(heads, 2, per_head // 2, *rows.shape[1:]).transpose(1, 2).reshape(rows.shape)


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """Extra rows (outputs that must stay 0): scales 0; values +1 (a value every type holds; the scale zeroes it)."""
    if rows <= t.shape[0]:
        return t
    extra = t.new_ones if t.dim() == 2 else t.new_zeros
    return torch.cat([t, extra(rows - t.shape[0], *t.shape[1:])])


def _pad_cols(values: torch.Tensor, cols: int) -> torch.Tensor:
    """Extra input columns (their inputs are always 0): +1, any value would do."""
    extra = cols - values.shape[1]
    return torch.cat([values, values.new_ones(values.shape[0], extra)], dim=1) if extra > 0 else values


def check_llama(model) -> dict:
    """The llama.cpp hyper-parameters of ``model`` (``arch``: its llama.cpp architecture); an ExportError for what
    that graph cannot run."""
    cfg = model.config
    arch = ARCHITECTURES.get(cfg.model_type)
    if arch is None:
        raise ExportError(f"model_type: got {cfg.model_type!r}; the GGUF exporter supports {', '.join(ARCHITECTURES)} "
                          "(llama.cpp's 'llama' and 'qwen2' architectures)")
    for flag in ("attention_bias", "mlp_bias"):
        if arch == "llama" and getattr(cfg, flag, False):
            raise ExportError(f"config.{flag}=True: llama.cpp's llama graph has no such biases; allowed: False")
    if getattr(cfg, "use_sliding_window", False):
        raise ExportError("config.use_sliding_window=True: llama.cpp's qwen2 graph attends to the whole context; "
                          "allowed: False")
    rope = dict(getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {})
    if rope.get("rope_type", "default") != "default":
        raise ExportError(f"rope type {rope.get('rope_type')!r}: only the default rotary embedding is exported")
    theta = rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    heads = cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    if cfg.hidden_act != "silu":
        raise ExportError(f"hidden_act: got {cfg.hidden_act!r}; llama.cpp's llama graph uses 'silu'")
    return {"arch": arch, "hidden": cfg.hidden_size, "intermediate": cfg.intermediate_size, "heads": heads,
            "kv_heads": kv, "head_dim": attention_head_dim(cfg), "layers": cfg.num_hidden_layers,
            "eps": float(cfg.rms_norm_eps), "rope_theta": float(theta), "context": int(cfg.max_position_embeddings),
            "vocab": cfg.vocab_size, "tied": bool(getattr(cfg, "tie_word_embeddings", False))}


def fold_llama(model, block: int, approximate: bool = False) -> LlamaTensors:
    """The tensors of ``model`` for a block type of ``block`` inputs (128: Q1_0; 256: TQ1_0 / TQ2_0); see the
    module docstring. ``approximate=False`` raises an ExportError when a ``g`` cannot be folded exactly."""
    cfg = check_llama(model)
    H, heads, kv, hd = cfg["hidden"], cfg["heads"], cfg["kv_heads"], cfg["head_dim"]
    group = heads // kv
    Hp = _round_up(H, block)
    kv_p = kv
    while (kv_p * group * hd) % block:  # o_proj's inputs: whole blocks, in whole dummy KV groups
        kv_p += 1
    heads_p = kv_p * group
    Ip = _round_up(cfg["intermediate"], block)
    report = FoldReport(hidden=(H, Hp), heads=(heads, heads_p), kv_heads=(kv, kv_p),
                        intermediate=(cfg["intermediate"], Ip))
    norm_scale = math.sqrt(H / Hp)  # RMS over H' of a zero-padded vector is sqrt(H / H') of its RMS over H
    layers = []
    biased = BIASED[cfg["arch"]]
    permute = cfg["arch"] == "llama"  # llama.cpp's llama graph pairs adjacent rotary dimensions; qwen2 halves, as HF
    base = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    for index, layer in enumerate(base.layers):
        mods = {name: getattr(layer.self_attn, name) for name in ATTN}
        mods.update({name: getattr(layer.mlp, name) for name in MLP})
        for name, m in mods.items():
            if not isinstance(m, OneBitLinear):
                raise ExportError(f"layers.{index}.{name}: a {type(m).__name__}, not a OneBitLinear; the exporter "
                                  "writes 1-bit / ternary layers only (quantize every block linear layer)")
            if (m.bias is not None) != (name in biased):
                raise ExportError(f"layers.{index}.{name}: {'has a' if m.bias is not None else 'has no'} bias; "
                                  f"llama.cpp's {cfg['arch']} graph has biases in "
                                  f"{', '.join(biased) if biased else 'no linear layer'}")
            if m.post_layernorm:
                raise ExportError(f"layers.{index}.{name}: post_layernorm=True has no llama.cpp equivalent")
        parts = {name: layer_parts(m) for name, m in mods.items()}
        bias = {name: mods[name].bias.detach().float().clone() for name in biased}
        out = {}

        def share(names, what):
            g, exact = shared_scale([parts[n][1] for n in names])
            for n in names:
                v, g_n, h_n = parts[n]
                if not exact:
                    h_n, err = refit_rows(v, g_n, h_n, g)
                    report.errors[f"layers.{index}.{n}"] = err
                parts[n] = (v, g, h_n)
            if not exact and not approximate:
                raise ExportError(
                    f"layers.{index}.{'/'.join(names)}: their input scales g differ, and llama.cpp has one {what} "
                    f"weight for all of them (relative weight error of the best shared g: "
                    f"{max(report.errors[f'layers.{index}.{n}'] for n in names):.3g}); quantize and distill with "
                    "OneBitConfig(tie_input_scales=True) for an exact export, or pass approximate=True "
                    "(--approximate) to accept the error")
            return g

        g_attn = share(("q_proj", "k_proj", "v_proj"), "attention RMSNorm")
        g_mlp = share(("gate_proj", "up_proj"), "MLP RMSNorm")
        # o_proj: its g per KV group goes into v_proj's h
        v_o, g_o, h_o = parts["o_proj"]
        g_groups = g_o.view(kv, group, hd)
        c, exact = shared_scale(list(g_groups.unbind(1)))  # (kv, hd)
        if not exact:
            h_o, err = refit_rows(v_o, g_o, h_o, c[:, None, :].expand(kv, group, hd).reshape(-1))
            report.errors[f"layers.{index}.o_proj"] = err
            if not approximate:
                raise ExportError(f"layers.{index}.o_proj: the input scales g of query heads sharing a KV head differ "
                                  f"(relative weight error of the best shared g: {err:.3g}); use "
                                  "OneBitConfig(tie_input_scales=True), or approximate=True")
        v_v, g_v, h_v = parts["v_proj"]
        parts["v_proj"] = (v_v, g_v, h_v * c.reshape(-1))
        if "v_proj" in bias:
            bias["v_proj"] = bias["v_proj"] * c.reshape(-1)
        parts["o_proj"] = (v_o, torch.ones_like(g_o), h_o)
        # down_proj: its g goes into up_proj's h
        v_d, g_d, h_d = parts["down_proj"]
        v_u, g_u, h_u = parts["up_proj"]
        parts["up_proj"] = (v_u, g_u, h_u * g_d)
        parts["down_proj"] = (v_d, torch.ones_like(g_d), h_d)

        out["attn_norm"] = torch.cat([layer.input_layernorm.weight.detach().float() * g_attn * norm_scale,
                                      torch.zeros(Hp - H)])
        out["ffn_norm"] = torch.cat([layer.post_attention_layernorm.weight.detach().float() * g_mlp * norm_scale,
                                     torch.zeros(Hp - H)])

        for name, (heads_in, heads_out) in (("q_proj", (heads, heads_p)), ("k_proj", (kv, kv_p)),
                                             ("v_proj", (kv, kv_p))):
            v, _, h = parts[name]
            b = bias.get(name)
            if permute and name != "v_proj":  # rotary pairs in llama.cpp's order (rows only: g is per input)
                v, h = _permute_rotary(v, heads_in), _permute_rotary(h, heads_in)
                b = None if b is None else _permute_rotary(b, heads_in)
            out[name] = Quantized(_pad_cols(_pad_rows(v, heads_out * hd), Hp), _pad_rows(h, heads_out * hd))
            if b is not None:
                out[f"{name}.bias"] = _pad_rows(b, heads_out * hd)
        v, _, h = parts["o_proj"]
        out["o_proj"] = Quantized(_pad_cols(_pad_rows(v, Hp), heads_p * hd), _pad_rows(h, Hp))
        for name in ("gate_proj", "up_proj"):
            v, _, h = parts[name]
            out[name] = Quantized(_pad_cols(_pad_rows(v, Ip), Hp), _pad_rows(h, Ip))
        v, _, h = parts["down_proj"]
        out["down_proj"] = Quantized(_pad_cols(_pad_rows(v, Hp), Ip), _pad_rows(h, Hp))
        layers.append(out)

    def pad_hidden(t):
        t = t.detach().float()
        return torch.cat([t, t.new_zeros(t.shape[0], Hp - H)], dim=1) if Hp > H else t

    embed = pad_hidden(base.embed_tokens.weight)
    head = model.get_output_embeddings()
    tied = cfg["tied"] or (head is not None and head.weight.data_ptr() == base.embed_tokens.weight.data_ptr())
    output = None if tied else pad_hidden(head.weight)
    output_norm = torch.cat([base.norm.weight.detach().float() * norm_scale, torch.zeros(Hp - H)])
    cfg = dict(cfg, hidden_padded=Hp, heads_padded=heads_p, kv_heads_padded=kv_p, intermediate_padded=Ip,
               eps_padded=cfg["eps"] * H / Hp, tied=tied)
    return LlamaTensors(cfg, embed, output, output_norm, layers, report)


def _unpermute_rotary(rows: torch.Tensor, heads: int) -> torch.Tensor:
    per_head = rows.shape[0] // heads
    return rows.reshape(heads, per_head // 2, 2, *rows.shape[1:]).transpose(1, 2).reshape(rows.shape)


def folded_model(tensors: LlamaTensors, dtype: torch.dtype = torch.float32, round_scales: bool = True):
    """The folded, padded tensors as a float transformers ``LlamaForCausalLM``: the function the GGUF file holds (what
    llama.cpp computes, apart from its 8-bit activations), for checking a fold and measuring what an approximate one
    costs on held-out text. Quantized scales are rounded to float16 as the file stores them (``round_scales=False``:
kept as folded, which shows the fold alone). A ``qwen2`` fold becomes a ``Qwen2ForCausalLM``."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    c = tensors.config
    qwen2 = c["arch"] == "qwen2"
    config_class, model_class = (Qwen2Config, Qwen2ForCausalLM) if qwen2 else (LlamaConfig, LlamaForCausalLM)
    extra = {"use_sliding_window": False} if qwen2 else {"attention_bias": False, "mlp_bias": False}
    # built with a width the heads divide (transformers' validation asks for it even with head_dim given), then set
    config = config_class(hidden_size=c["heads_padded"] * c["head_dim"], intermediate_size=c["intermediate_padded"],
                          num_attention_heads=c["heads_padded"], num_key_value_heads=c["kv_heads_padded"],
                          head_dim=c["head_dim"], num_hidden_layers=c["layers"], rms_norm_eps=c["eps_padded"],
                          vocab_size=c["vocab"], max_position_embeddings=c["context"], tie_word_embeddings=c["tied"],
                          rope_parameters={"rope_type": "default", "rope_theta": c["rope_theta"]},
                          hidden_act="silu", **extra)
    config.hidden_size = c["hidden_padded"]
    model = model_class(config).to(dtype).eval()

    def dense(q: Quantized, heads: int | None = None) -> torch.Tensor:
        scales = q.scales.to(torch.float16).float() if round_scales else q.scales
        w = q.values.float() * scales[:, None]
        return _unpermute_rotary(w, heads) if heads and not qwen2 else w

    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(tensors.embed)
        if tensors.output is not None:
            model.lm_head.weight.copy_(tensors.output)
        model.model.norm.weight.copy_(tensors.output_norm)
        for layer, t in zip(model.model.layers, tensors.layers):
            layer.input_layernorm.weight.copy_(t["attn_norm"])
            layer.post_attention_layernorm.weight.copy_(t["ffn_norm"])
            layer.self_attn.q_proj.weight.copy_(dense(t["q_proj"], c["heads_padded"]))
            layer.self_attn.k_proj.weight.copy_(dense(t["k_proj"], c["kv_heads_padded"]))
            layer.self_attn.v_proj.weight.copy_(dense(t["v_proj"]))
            layer.self_attn.o_proj.weight.copy_(dense(t["o_proj"]))
            for name in BIASED[c["arch"]]:
                getattr(layer.self_attn, name).bias.copy_(t[f"{name}.bias"])
            for name in MLP:
                getattr(layer.mlp, name).weight.copy_(dense(t[name]))
    return model
