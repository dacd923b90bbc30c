"""OneBitConfig: the quantization config stored in ``config.json`` under ``quantization_config``."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from transformers.utils.quantization_config import QuantizationConfigMixin

from .formats.packing import FORMAT_VERSION, WEIGHT_FORMATS, check_format_version

QUANT_METHOD = "onebit"

INIT_METHODS = ("svid", "nmf")
SCALE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
BACKENDS = ("auto", "reference", "cpu", "triton")
ACT_BITS = (0, 8, "auto")
#: ``head_bits`` values: 16 (the output head's float weights) or 8 (an int8 copy for decode-size calls on a CPU).
HEAD_BITS = (16, 8)

_FIELDS = (
    "modules_to_not_convert",
    "init",
    "init_iters",
    "post_layernorm",
    "scale_dtype",
    "backend",
    "act_bits",
    "head_bits",
    "weight_format",
    "format_version",
    "training",
    "tie_input_scales",
)


#: Upper bound of ``init_iters`` (the rank-1 solvers converge in tens of iterations; more only costs time).
MAX_INIT_ITERS = 10_000


def _fail(field: str, value: Any, allowed: str) -> None:
    raise ValueError(f"OneBitConfig.{field}: got {value!r}; allowed: {allowed}")


def _name_list(value):
    """``modules_to_not_convert`` as a list: one name given as a string is one name (not its characters)."""
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if not isinstance(value, (list, tuple, set, frozenset)):
        _fail("modules_to_not_convert", value, "None, a module name, or a list of module names")
    return list(value)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_head_bits(value, where: str = "OneBitConfig.head_bits") -> int:
    """``value`` if it is one of :data:`HEAD_BITS`, else a ValueError naming ``where``, the value and what is
    allowed."""
    if not (_is_int(value) and value in HEAD_BITS):
        raise ValueError(f"{where}: got {value!r}; allowed: one of {HEAD_BITS}")
    return value


class OneBitConfig(QuantizationConfigMixin):
    """Configuration of hf_onebit's 1-bit quantization.

    A quantized linear layer computes ``y = ((x * g) @ sign(W).T) * h (+ bias)`` from 1 bit per weight plus the two
    float vectors ``g`` (``scale_in``, one per input) and ``h`` (``scale_out``, one per output).

    Args:
        modules_to_not_convert: extra module names (or name suffixes) to keep in full precision. The default skips
            (``lm_head``, tied embeddings, the output embedding) always apply on top of this list.
        init: how the scale vectors are initialised from a pretrained weight: ``"svid"`` (sign-value-independent
            decomposition, rank-1 fit of ``|W|`` by power iteration) or ``"nmf"`` (rank-1 non-negative matrix
            factorisation by multiplicative updates; OneBit's preferred variant).
        init_iters: iterations of the rank-1 solver.
        post_layernorm: add a LayerNorm without affine parameters after every 1-bit linear (OneBit's official code).
            It stabilises training, but the quantized model no longer starts as the SVID approximation of the teacher.
        scale_dtype: storage dtype of ``g`` and ``h``: ``"float16"`` (default), ``"bfloat16"`` or ``"float32"``.
        backend: kernel choice: ``"auto"`` (fastest available for the device), ``"reference"`` (pure PyTorch),
            ``"cpu"`` or ``"triton"`` (force that kernel; an error where it cannot run).
        act_bits: ``"auto"`` (default): the fast activation mode of the device each call runs on - int8 per token on
            CPUs, exact float elsewhere (:data:`hf_onebit.ops.AUTO_ACT_BITS`); ``0`` always computes with exact float
            activations; ``8`` always quantises ``x * g`` per token to int8 first (symmetric absmax, as llama.cpp's
            and BitNet's kernels do).
        head_bits: what the output head (kept float, a :class:`~hf_onebit.nn.float_head.FloatHead`) reads on
            decode-size calls on a CPU (up to 4 rows, no gradient): ``8`` (default) an int8 copy of its weights with
            one float scale per row (symmetric absmax), made at the first such call - half the bytes of bf16; ``16``
            the float weights. Prefill, training and other devices always use the float weights, which are what is
            saved.
        weight_format: ``"binary"`` (default: ``sign(W)`` in {-1, +1}, 1 bit per weight, SVID scales) or
            ``"ternary"`` (BitNet b1.58 values in {-1, 0, +1}, 2-bit codes, the same ``g`` / ``h`` vectors: about
            2 bits per weight, a clearly smaller reconstruction error; see ``docs/concepts/ternary.md``).
        format_version: version of the packed layout (see :mod:`hf_onebit.formats.packing`).
        training: load linear layers in their latent (trainable float) form for distillation instead of packed.
        tie_input_scales: keep equal the ``g`` of layers that read one input (q/k/v, gate/up, and the query heads
            of one KV head in o_proj), so that the model exports exactly to llama.cpp's 1-bit / ternary types
            (:mod:`hf_onebit.integration.tying`; ``hf-onebit export gguf``). LLaMA-type decoders only.
    """

    def __init__(
        self,
        modules_to_not_convert: list[str] | None = None,
        init: str = "svid",
        init_iters: int = 30,
        post_layernorm: bool = False,
        scale_dtype: str = "float16",
        backend: str = "auto",
        act_bits: int | str = "auto",
        head_bits: int = 8,
        weight_format: str = "binary",
        format_version: int = FORMAT_VERSION,
        training: bool = False,
        tie_input_scales: bool = False,
        **kwargs,
    ):
        self.quant_method = QUANT_METHOD
        kwargs.pop("quant_method", None)
        self.modules_to_not_convert = _name_list(modules_to_not_convert)
        self.init = init
        self.init_iters = init_iters
        self.post_layernorm = post_layernorm
        self.scale_dtype = str(scale_dtype).replace("torch.", "")
        self.backend = backend
        self.act_bits = act_bits
        self.head_bits = head_bits
        self.weight_format = weight_format
        self.format_version = format_version
        self.training = training
        self.tie_input_scales = tie_input_scales
        if kwargs:
            warnings.warn(
                f"OneBitConfig: ignoring unknown fields {sorted(kwargs)} (written by a newer hf_onebit?)", stacklevel=2
            )
        self.post_init()

    def post_init(self):
        """Validate every field; raise a ValueError naming the field, the value and what is allowed."""
        skip = self.modules_to_not_convert
        if skip is not None and not all(isinstance(name, str) and name for name in skip):
            _fail("modules_to_not_convert", skip, "a list of non-empty module names")
        if self.init not in INIT_METHODS:
            _fail("init", self.init, f"one of {INIT_METHODS}")
        if not _is_int(self.init_iters) or not 1 <= self.init_iters <= MAX_INIT_ITERS:
            _fail("init_iters", self.init_iters, f"an integer from 1 to {MAX_INIT_ITERS}")
        if not isinstance(self.post_layernorm, bool):
            _fail("post_layernorm", self.post_layernorm, "True or False")
        if self.scale_dtype not in SCALE_DTYPES:
            _fail("scale_dtype", self.scale_dtype, f"one of {tuple(SCALE_DTYPES)}")
        if self.backend not in BACKENDS:
            _fail("backend", self.backend, f"one of {BACKENDS}")
        if self.act_bits != "auto" and not (_is_int(self.act_bits) and self.act_bits in ACT_BITS):
            _fail("act_bits", self.act_bits, f"one of {ACT_BITS}")
        check_head_bits(self.head_bits)
        if self.weight_format not in WEIGHT_FORMATS:
            _fail("weight_format", self.weight_format, f"one of {WEIGHT_FORMATS}")
        try:
            self.format_version = check_format_version(self.format_version)
        except ValueError as err:
            raise ValueError(f"OneBitConfig.{err}") from None
        if not isinstance(self.training, bool):
            _fail("training", self.training, "True or False")
        if not isinstance(self.tie_input_scales, bool):
            _fail("tie_input_scales", self.tie_input_scales, "True or False")

    @property
    def torch_scale_dtype(self) -> torch.dtype:
        return SCALE_DTYPES[self.scale_dtype]

    def to_dict(self) -> dict[str, Any]:
        out = {"quant_method": self.quant_method}
        out.update({name: getattr(self, name) for name in _FIELDS})
        # What is saved is always the packed form: a reloaded checkpoint is an inference model.
        out["training"] = False
        return out

    def to_diff_dict(self) -> dict[str, Any]:
        """Only the fields that differ from the defaults (plus ``quant_method``)."""
        defaults = OneBitConfig().to_dict()
        return {k: v for k, v in self.to_dict().items() if k == "quant_method" or defaults.get(k) != v}

    def layer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments shared by every OneBitLinear built from this config."""
        return {
            "post_layernorm": self.post_layernorm,
            "scale_dtype": self.torch_scale_dtype,
            "backend": self.backend,
            "act_bits": self.act_bits,
            "weight_format": self.weight_format,
        }
