"""OneBitLinear: the one module that knows the 1-bit format, in packed (inference) and latent (training) form.

Packed form (what is saved and served)::

    weight     uint8 (out_features, ceil(in_features / 8))   sign bits, layout in hf_onebit.formats.packing
               uint8 (out_features, ceil(in_features / 4))   with weight_format="ternary": 2-bit codes of {-1, 0, +1}
    scale_in   float (in_features,)                          g
    scale_out  float (out_features,)                         h
    bias       float (out_features,) or None

    y = ((x * g) @ sign(W).T) * h (+ bias)                   optionally LayerNorm(no affine) before the bias

``act_bits`` says how a packed layer takes its activations: ``0`` (the default of a layer built directly, as of the
ops) exact float, ``8`` int8 per token, ``"auto"`` int8 per token on CPUs and exact float elsewhere
(:func:`hf_onebit.ops.resolve_act_bits`; the default of :class:`~hf_onebit.OneBitConfig`, so of every model that
``from_pretrained`` quantizes).

Latent form (distillation / QAT): ``weight`` is a float32 ``(out_features, in_features)`` matrix of latent weights
and ``g``/``h`` are float32. The forward binarises the latent weights with ``self.binarizer`` (hard sign with a
tanh-derivative backward by default; training recipes install their own). :meth:`pack_` converts to the packed form
with exactly the hard-sign function.

Ternary layers (``weight_format="ternary"``, BitNet b1.58 values) compute ``y = ((x * g) @ T.T) * h (+ bias)`` with
``T`` in {-1, 0, +1}; their default latent binarizer is :func:`hard_ternary` (row-absmean threshold, straight-through
backward) and :meth:`pack_` stores exactly its values.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops
from ..formats import FORMATS, SignWithTanhGrad, TernaryWithSTE, WeightFormat, get_format, hard_sign, hard_ternary
from ..formats.packing import check_packed_shape


#: The default latent binarizer of each weight format (the format's hard quantizer, :attr:`WeightFormat.hard`).
DEFAULT_BINARIZERS = {name: fmt.hard for name, fmt in FORMATS.items()}


def hard_quantize(weight: torch.Tensor, weight_format: str) -> torch.Tensor:
    """Pack a latent float weight with the format's hard quantizer (signs, or absmean ternary codes)."""
    return get_format(weight_format).quantize(weight)


class OneBitLinear(nn.Module):
    """A linear layer with 1-bit weights and float input/output scale vectors (see the module docstring)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        post_layernorm: bool = False,
        scale_dtype: torch.dtype = torch.float16,
        backend: str = "auto",
        act_bits: int | str = 0,
        weight_format: str = "binary",
        latent: bool = False,
        device=None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(f"OneBitLinear: in_features={in_features}, out_features={out_features}; both must be >= 1")
        self.in_features = in_features
        self.out_features = out_features
        self.post_layernorm = post_layernorm
        self.backend = backend
        self.act_bits = act_bits
        self.scale_dtype = scale_dtype
        try:
            fmt = get_format(weight_format)
        except ValueError as err:
            raise ValueError(f"OneBitLinear.{err}") from None
        self.weight_format = fmt.name
        self.binarizer = fmt.hard
        if latent:
            self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=torch.float32))
            vec_dtype = torch.float32
        else:
            packed = torch.zeros(out_features, fmt.packed_columns(in_features), device=device, dtype=torch.uint8)
            self.weight = nn.Parameter(packed, requires_grad=False)
            vec_dtype = scale_dtype
        self.scale_in = nn.Parameter(torch.ones(in_features, device=device, dtype=vec_dtype))
        self.scale_out = nn.Parameter(torch.ones(out_features, device=device, dtype=vec_dtype))
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype or torch.float32))
        else:
            self.register_parameter("bias", None)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_linear(cls, linear: nn.Linear, config=None, *, latent: bool | None = None) -> "OneBitLinear":
        """Convert one ``nn.Linear`` (SVID / NMF initialisation from its weight) using a :class:`OneBitConfig`."""
        from ..config import OneBitConfig

        config = config or OneBitConfig()
        latent = config.training if latent is None else latent
        weight = linear.weight
        if weight.device.type == "meta":
            raise ValueError("OneBitLinear.from_linear: the linear layer is on the meta device (no weights to convert)")
        module = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            latent=latent,
            device=weight.device,
            dtype=linear.bias.dtype if linear.bias is not None else None,
            **config.layer_kwargs(),
        )
        tensors = quantize_weight(weight, config, latent=latent)
        module.load_quantized_(tensors)
        if linear.bias is not None:
            module.bias.data.copy_(linear.bias.detach())
        return module

    def load_quantized_(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy ``{"weight", "scale_in", "scale_out"}`` produced by :func:`quantize_weight` into this module."""
        with torch.no_grad():
            for name in ("weight", "scale_in", "scale_out"):
                param = getattr(self, name)
                value = tensors[name]
                if value.shape != param.shape:
                    raise ValueError(f"{name}: shape {tuple(value.shape)} does not match {tuple(param.shape)}")
                param.data = value.to(device=param.device, dtype=param.dtype)

    # ------------------------------------------------------------------ form
    @property
    def format(self) -> WeightFormat:
        """The layer's :class:`~hf_onebit.formats.WeightFormat` (from :attr:`weight_format`)."""
        return get_format(self.weight_format)

    @property
    def is_latent(self) -> bool:
        return self.weight.dtype != torch.uint8

    @torch.no_grad()
    def pack_(self) -> "OneBitLinear":
        """Latent -> packed, in place: the packed forward equals the latent forward with the format's default binarizer
        (:func:`hard_sign`, or :func:`hard_ternary` for ternary layers)."""
        if not self.is_latent:
            return self
        self.weight = nn.Parameter(self.format.quantize(self.weight.data), requires_grad=False)
        self.scale_in = nn.Parameter(self.scale_in.data.to(self.scale_dtype))
        self.scale_out = nn.Parameter(self.scale_out.data.to(self.scale_dtype))
        self.binarizer = self.format.hard
        return self

    @torch.no_grad()
    def to_latent_(self) -> "OneBitLinear":
        """Packed -> latent (latent weights = the signs or ternary values, float32 scales), in place; the function is
        unchanged: the default binarizer maps these latent weights back to the same values (for ternary rows the row
        absmean is the fraction ``f`` of non-zeros and ``round(T / f)`` clamps back to ``T``)."""
        if self.is_latent:
            return self
        self.weight = nn.Parameter(self.format.unpack(self.weight.data, self.in_features, torch.float32))
        self.scale_in = nn.Parameter(self.scale_in.data.float())
        self.scale_out = nn.Parameter(self.scale_out.data.float())
        return self

    def packed_state(self) -> dict[str, torch.Tensor]:
        """The tensors the packed form of this layer would save (works in either form, does not modify the layer)."""
        if not self.is_latent:
            return {"weight": self.weight.data, "scale_in": self.scale_in.data, "scale_out": self.scale_out.data}
        return {
            "weight": self.format.quantize(self.weight.detach()),
            "scale_in": self.scale_in.detach().to(self.scale_dtype),
            "scale_out": self.scale_out.detach().to(self.scale_dtype),
        }

    @torch.no_grad()
    def dequantize_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Dense ``(out, in)`` weight with the same function as this layer (without bias or post-LayerNorm)."""
        state = self.packed_state()
        return ops.reference.dequantize_binary(state["weight"], state["scale_in"], state["scale_out"], self.in_features,
                                               dtype, self.weight_format)

    def check_packed(self, prefix: str = "") -> None:
        """Raise a ValueError naming the tensor when the packed tensors do not fit this layer."""
        check_packed_shape(self.weight, self.out_features, self.in_features, name=f"{prefix}weight",
                           weight_format=self.weight_format)
        for name, size in (("scale_in", self.in_features), ("scale_out", self.out_features)):
            t = getattr(self, name)
            if tuple(t.shape) != (size,) or not t.is_floating_point():
                raise ValueError(f"{prefix}{name}: expected a float vector of shape ({size},), got {t.dtype} {tuple(t.shape)}")

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.post_layernorm else self.bias
        if self.is_latent:
            y = self._latent_linear(x, bias)
        else:
            y = ops.linear(x, self._packed(bias), self.act_bits, self.backend)
        if self.post_layernorm:
            y = F.layer_norm(y, (self.out_features,))
            if self.bias is not None:
                y = y + self.bias.to(y.dtype)
        return y

    def packed_weight(self, bias: torch.Tensor | None = None) -> ops.PackedWeight:
        """The packed form as the kernels read it (:class:`hf_onebit.ops.PackedWeight`, no copies); ``bias``: the
        bias the matmul adds (the forward passes None when the bias follows the post-LayerNorm)."""
        if self.is_latent:
            raise ValueError("OneBitLinear.packed_weight: the layer is in latent form; allowed: a packed layer "
                             "(pack_() first)")
        return self._packed(bias)

    def _packed(self, bias: torch.Tensor | None) -> ops.PackedWeight:
        return ops.PackedWeight(self.weight, self.scale_in, self.scale_out, bias, self.in_features, self.weight_format)

    def prepare(self, dtype: torch.dtype = torch.float32) -> bool:
        """Build the runtime layout the kernel for ``dtype`` inputs keeps for this weight (CPU: call plan, huge pages,
        ternary t5 copy; Triton: repacked words) now instead of on the first calls (:func:`hf_onebit.ops.prepare`).
        Optional; True when a kernel prepared something."""
        bias = None if self.post_layernorm else self.bias
        return ops.prepare(self.packed_weight(bias), self.act_bits, dtype, self.backend)

    def _latent_linear(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``((x * scale_in) @ binarizer(weight).T) * scale_out + bias``. A binarizer that offers
        ``scaled_weight(weight, scale_in, scale_out, dtype)`` may return the weight with both scales folded in (one pass
        over the weight instead of two over the activations and their gradients); None means it cannot. The folded
        product and the unfolded one both come out in the matmul's dtype (under autocast: autocast's, as from
        ``nn.Linear``): the unfolded layer multiplies by ``scale_out`` in that dtype. Promoting the output to the
        float32 scale's dtype instead made every projection output float32 under bf16 autocast, and the MLP's
        activation and product and every cast after it ran on float32 copies: a SmolLM2-135M distillation step of 4 x
        256 tokens took ~1.08x as long (separate runs of ``benchmarks/distill_overhead.py``, AMD EPYC Zen 5)."""
        dtype = x.dtype
        autocast = torch.is_autocast_enabled(x.device.type)
        fold = getattr(self.binarizer, "scaled_weight", None)
        if fold is not None:
            matmul_dtype = torch.get_autocast_dtype(x.device.type) if autocast else dtype
            w = fold(self.weight, self.scale_in, self.scale_out, matmul_dtype)
            if w is not None:
                return F.linear(x, w, None if bias is None else bias.to(w.dtype))
        w = self.binarizer(self.weight)
        if not autocast:  # (under autocast the matmul casts w itself)
            w = w.to(dtype)
        y = F.linear(x * self.scale_in.to(dtype), w)
        y = y * self.scale_out.to(y.dtype)
        return y if bias is None else y + bias.to(y.dtype)

    def extra_repr(self) -> str:
        form = "latent" if self.is_latent else "packed"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"form={form}, post_layernorm={self.post_layernorm}, backend={self.backend}, act_bits={self.act_bits}"
            + (f", weight_format={self.weight_format}" if self.format.is_ternary else "")
        )


def quantize_weight(weight: torch.Tensor, config, latent: bool = False) -> dict[str, torch.Tensor]:
    """Quantize one float weight ``(out, in)``: ``{"weight", "scale_in", "scale_out"}`` in packed or latent form.

    Binary: signs plus the SVID / NMF rank-1 fit of ``|W|``. Ternary (``config.weight_format="ternary"``): the
    row-absmean ternary values with the least-squares scale vectors of :func:`~hf_onebit.formats.init.ternary_init`; the
    latent form keeps ``W`` itself (its hard ternarization is those same values).
    """
    fmt = get_format(config.weight_format)
    values, g, h = fmt.fit(weight.detach(), method=config.init, iters=config.init_iters)
    if latent:
        return {"weight": weight.detach().float().clone(), "scale_in": g, "scale_out": h}
    dtype = config.torch_scale_dtype
    return {"weight": fmt.pack(values), "scale_in": g.to(dtype), "scale_out": h.to(dtype)}
