"""OneBitHfQuantizer: hf_onebit on the transformers 5.x ``from_pretrained`` / ``save_pretrained`` paths."""

from __future__ import annotations

import logging

import torch
from transformers.core_model_loading import ConversionOps
from transformers.quantizers.base import HfQuantizer
from transformers.quantizers.quantizers_utils import get_module_from_name

from .checkpoint import saved_settings_metadata, validate_checkpoint
from .convert import dequantize_, replace_with_empty_onebit_linear
from .attention import use_decode_attention
from .head import use_float_head
from ..nn.linear import OneBitLinear, quantize_weight
from ..formats import get_format

logger = logging.getLogger(__name__)

_SCALE_SUFFIXES = (".scale_in", ".scale_out")


class OneBitQuantize(ConversionOps):
    """Load-time op: one float ``...weight`` in, the module's packed (or latent) tensors out, under full names."""

    def __init__(self, hf_quantizer: "OneBitHfQuantizer"):
        self.hf_quantizer = hf_quantizer

    @torch.no_grad()
    def convert(self, input_dict, model=None, full_layer_name=None, **kwargs):
        key, value = next(iter(input_dict.items()))
        value = value[0] if isinstance(value, list) else value
        if not value.is_floating_point():
            raise RuntimeError(
                f"{key}: the loader handed hf_onebit a {value.dtype} tensor instead of the float weight (older "
                "transformers releases cast weights to the packed dtype before quantizing); upgrade transformers"
            )
        module_name = key.rsplit(".", 1)[0]
        tensors = quantize_weight(value, self.hf_quantizer.quantization_config, latent=self.hf_quantizer.latent)
        del value
        return {f"{module_name}.{name}": tensor for name, tensor in tensors.items()}

    @property
    def reverse_op(self) -> ConversionOps:
        # Saving writes the packed tensors as they are (see get_state_dict_and_metadata).
        return _KeepPacked()


class _KeepPacked(ConversionOps):
    def convert(self, input_dict, **kwargs):
        return input_dict


class OneBitHfQuantizer(HfQuantizer):
    """Swaps the transformer blocks' linear layers for :class:`OneBitLinear` and fills them while weights load."""

    requires_calibration = False

    def __init__(self, quantization_config, **kwargs):
        super().__init__(quantization_config, **kwargs)
        self.modules_to_not_convert: list[str] = []
        #: what ``save_pretrained`` writes for latent layers: ``"packed"`` (always, unless :func:`set_save_form`
        #: switched it to ``"latent"`` for the checkpoints of a training run)
        self.save_form = "packed"
        #: the layers whose float placeholder the quantize op must replace by packed bits while loading
        self.placeholder_layers: list[str] = []

    # ---------------------------------------------------------------- environment
    def validate_environment(self, *args, **kwargs):
        self.quantization_config.post_init()
        if self.pre_quantized and self.quantization_config.training:
            logger.warning("hf_onebit: a saved onebit checkpoint is packed; training=True is ignored when loading it")
            self.quantization_config.training = False

    @property
    def latent(self) -> bool:
        return bool(self.quantization_config.training and not self.pre_quantized)

    def param_needs_quantization(self, model, param_name: str, **kwargs) -> bool:
        if self.pre_quantized:
            return False
        module, tensor_name = get_module_from_name(model, param_name)
        return isinstance(module, OneBitLinear) and tensor_name == "weight"

    def param_element_size(self, model, param_name: str, param: torch.Tensor) -> float:
        # device_map sizing counts what the layer will hold: a float placeholder that becomes packed bits costs
        # 1 bit per weight (2 for ternary codes); a pre-quantized meta model already has the packed uint8 shape.
        if not self.latent and param.is_floating_point() and self.param_needs_quantization(model, param_name):
            return 1 / get_format(self.quantization_config.weight_format).weights_per_byte
        return param.element_size()

    def get_new_dtype(self, converter, param, dtype):
        targets = getattr(converter, "target_patterns", None) or []
        if any(str(t).endswith(_SCALE_SUFFIXES) for t in targets):
            return None  # keep the stored scale dtype (a cast to the model dtype could round fp16 scales)
        return super().get_new_dtype(converter, param, dtype)

    # ---------------------------------------------------------------- module swap
    def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs):
        self.modules_to_not_convert = self.get_modules_to_not_convert(
            model, self.quantization_config.modules_to_not_convert, model._keep_in_fp32_modules, add_default_skips=True
        )
        # Quantizing on the fly, each layer first holds a float `weight` placeholder (on meta, no memory) that the
        # quantize op replaces with the packed bits: transformers releases before 5.23 cast a checkpoint tensor to
        # the placeholder's dtype before handing it to the op, which would destroy a float weight cast to uint8.
        names = replace_with_empty_onebit_linear(
            model,
            self.quantization_config,
            self.modules_to_not_convert,
            latent=self.latent,
            float_placeholder=not self.pre_quantized,
        )
        if not names:
            logger.warning("hf_onebit: no nn.Linear layer to quantize was found in %s", type(model).__name__)
        self.placeholder_layers = [] if self.pre_quantized or self.latent else list(names)
        if self.pre_quantized:
            layers = {name: model.get_submodule(name) for name in names}
            validate_checkpoint(checkpoint_files, layers, getattr(model, "base_model_prefix", ""), model=model,
                                config=self.quantization_config)
        return model

    def _process_model_after_weight_loading(self, model, **kwargs):
        from ..interop import hub  # ecosystem hooks: packed disk offload, the model card's teacher and Hub tags
        from . import offload

        if not self.pre_quantized and not self.latent:
            offload.repair_disk_offloaded_signs(model)
        for name in self.placeholder_layers:
            if model.get_submodule(name).weight.dtype != torch.uint8:
                raise ValueError(f"{name}.weight: was not quantized while loading (no float weight reached it)")
        for name, module in model.named_modules():
            if isinstance(module, OneBitLinear):
                for pname, param in module.named_parameters(recurse=False):
                    if param.device.type == "meta" and not getattr(model, "hf_device_map", None):
                        raise ValueError(f"{name}.{pname}: was not loaded (still on the meta device)")
                if module.is_latent:
                    # Trainable float vectors stay float32 (bf16 updates round away at small learning rates).
                    module.scale_in.data = module.scale_in.data.float()
                    module.scale_out.data = module.scale_out.data.float()
        if self.quantization_config.tie_input_scales and not self.pre_quantized:
            from .tying import tie_input_scales_

            errors = tie_input_scales_(model)
            if errors:
                logger.info("hf_onebit: tied input scales; largest relative weight change %.3g (%s)",
                            max(errors.values()), max(errors, key=errors.get))
        hub.record_teacher(model, None if self.pre_quantized else model.config.name_or_path)
        use_float_head(model, self.quantization_config.head_bits)
        use_decode_attention(model)
        return model

    def get_quantize_ops(self):
        return OneBitQuantize(self)

    # ---------------------------------------------------------------- save / dequantize
    def get_state_dict_and_metadata(self, model):
        metadata = saved_settings_metadata(self.quantization_config)
        latent = [(n, m) for n, m in model.named_modules() if isinstance(m, OneBitLinear) and m.is_latent]
        if latent and self.save_form == "latent":
            # The distillation callback sets this for the length of a training run (set_save_form): Trainer
            # checkpoints keep the latent tensors so that resume_from_checkpoint can load them back; the final
            # save_pretrained, after training, packs.
            return None, {**metadata, "hf_onebit_form": "latent"}
        if not latent:
            return None, metadata
        state_dict = model.state_dict()
        for name, module in latent:
            for key, tensor in module.packed_state().items():
                state_dict[f"{name}.{key}"] = tensor
        return state_dict, metadata

    def _dequantize(self, model, dtype=None):
        return dequantize_(model, dtype)

    def is_serializable(self):
        return True

    @property
    def is_trainable(self) -> bool:
        return True

    @property
    def is_qat_trainable(self) -> bool:
        return True

    @property
    def is_compileable(self) -> bool:
        return True


SAVE_FORMS = ("packed", "latent")


def set_save_form(model, form: str) -> None:
    """Choose what ``model.save_pretrained`` writes for the model's latent (trainable) 1-bit layers.

    ``"packed"`` (the default): the packed bits and scale vectors, the form every reader loads. ``"latent"``: the
    float latent tensors as they are, marked ``hf_onebit_form: latent`` in the metadata, so that a Trainer checkpoint
    can be resumed with ``resume_from_checkpoint``; :class:`~hf_onebit.training.OneBitDistillationCallback` sets it at
    the start of training and back to ``"packed"`` at the end. A model that was not loaded through hf_onebit's
    quantizer (e.g. converted with :func:`~hf_onebit.quantize_`) saves its own state dict, latent tensors included,
    and is left unchanged.
    """
    if form not in SAVE_FORMS:
        raise ValueError(f"set_save_form: form={form!r}; allowed: one of {SAVE_FORMS}")
    quantizer = getattr(model, "hf_quantizer", None)
    if isinstance(quantizer, OneBitHfQuantizer):
        quantizer.save_form = form
