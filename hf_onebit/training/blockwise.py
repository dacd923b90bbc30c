"""Block-wise reconstruction: train each transformer block of the 1-bit student to reproduce its teacher block.

Before end-to-end distillation, :func:`blockwise_reconstruct_` runs the teacher once over a few calibration
sequences and then, block after block:

1. takes the block's input - the student's own stream (``inputs="student"``: the output of the student blocks
   already trained, so each block learns to correct what the earlier ones got wrong; EfficientQAT's choice) or the
   teacher's (``inputs="teacher"``: independent blocks);
2. fits the block's 1-bit layers' scale vectors to the block's input activations (output error over ``X^T X``:
   :func:`~hf_onebit.training.scale_fit.fit_scales`, ``scale_init="data"``, the default), chooses the codes with
   error feedback as well (``"gptq"``), or keeps SVID's (``"svid"``);
3. trains the block's latent weights, scales and norms with AdamW so that the block's output matches the teacher
   block's output on the teacher's stream (``loss="output"``: the squared error over the batch relative to the
   target's squared norm; ``"token"``: relative per token, so that a few massive activations weigh no more than any
   other token), through the hard quantizer with a straight-through gradient (``schedule="hard"``, the default) or
   with the binarizer going from (almost) the identity to the hard sign over the block's steps (the progressive
   function of Tu et al. with dual scaling: ``schedule="progressive"``; on SmolLM2-135M far worse at a few dozen
   steps per block);
4. ends with the hard quantizer (the packed layer's function) and computes the block's output as the next block's
   input.

A block costs a 30th of the model per token and needs neither the LM head nor the vocabulary-wide KL, and its target
is local: the student starts the end-to-end stage close to the teacher instead of at a perplexity in the millions.
The student afterwards computes exactly what its packed form computes; hand it to the Trainer with
``OneBitDistillationCallback(teacher, recipe="onebit")`` (which keeps the scales) for the end-to-end stage.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from ..nn.linear import OneBitLinear
from ..integration.tying import tie_input_scales_, ties_input_scales
from .binarizers import ProgressiveBinarizer, Temperature, finalize_module_, quantizer_for
from .scale_fit import codes_to_latent, fit_scales, gptq_codes

INPUTS = ("student", "teacher")
LOSSES = ("output", "token")
SCHEDULES = ("progressive", "hard")
SCALE_INITS = ("gptq", "data", "svid")


@dataclass(frozen=True)
class BlockwiseConfig:
    """Settings of the block-wise stage (see the module docstring)."""

    steps: int = 64
    batch_size: int = 4
    lr: float = 1e-3
    scale_lr: float | None = None  # default: 3.3 x lr
    inputs: str = "student"
    schedule: str = "hard"
    scale_init: str = "data"
    t_end: float = 104.6
    phases: int = 10
    weight_decay: float = 0.0
    train_norms: bool = True
    loss: str = "output"
    report_start_error: bool = False  # one more pass per block: the error of the block before its training
    #: the training steps under bf16 autocast (the latent parameters, the targets and the loss stay float32); the
    #: end-to-end stage's ``bf16`` setting, on by default where bf16 is fast
    bf16: bool = False

    def __post_init__(self):
        for name, low in (("steps", 0), ("batch_size", 1), ("phases", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"BlockwiseConfig.{name}: got {value!r}; allowed: an integer >= {low}")
        for name in ("lr", "t_end"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"BlockwiseConfig.{name}: got {value!r}; allowed: a number > 0")
        if self.scale_lr is not None and not self.scale_lr > 0:
            raise ValueError(f"BlockwiseConfig.scale_lr: got {self.scale_lr!r}; allowed: None or a number > 0")
        if not isinstance(self.bf16, bool):
            raise ValueError(f"BlockwiseConfig.bf16: got {self.bf16!r}; allowed: True or False")
        for name, allowed in (("inputs", INPUTS), ("schedule", SCHEDULES), ("scale_init", SCALE_INITS),
                              ("loss", LOSSES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"BlockwiseConfig.{name}: got {getattr(self, name)!r}; allowed: one of {allowed}")


def decoder_layers(model) -> torch.nn.ModuleList:
    """The transformer blocks of a causal LM (``model.model.layers`` for LLaMA, Qwen2, Gemma, ...)."""
    base = model.get_decoder() if hasattr(model, "get_decoder") else model
    layers = getattr(base, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or len(layers) == 0:
        raise ValueError(f"{type(model).__name__}: no decoder layer list found (expected `.model.layers`); block-wise "
                         "reconstruction supports LLaMA-style decoder models")
    return layers


class _Captured(Exception):
    pass


@torch.no_grad()
def capture_block_inputs(model, ids: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """The first block's input (``(batch, seq, hidden)`` embeddings) for token ids ``ids``, and the keyword arguments
    the model passes to every block (attention mask, position embeddings, ...) for a batch of that shape."""
    layers = decoder_layers(model)
    seen = {}

    def hook(module, args, kwargs):
        seen["hidden"] = args[0] if args else kwargs["hidden_states"]
        seen["kwargs"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        raise _Captured

    handle = layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        model(input_ids=ids, use_cache=False)
    except _Captured:
        pass
    finally:
        handle.remove()
    kwargs = seen["kwargs"]
    for key in ("cache", "past_key_values", "past_key_value"):
        kwargs.pop(key, None)
    kwargs["use_cache"] = False
    return seen["hidden"], kwargs


def run_block(layer, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
    out = layer(hidden, **kwargs)
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def _run_all(layer, hidden: torch.Tensor, kwargs: dict, batch: int) -> torch.Tensor:
    return torch.cat([run_block(layer, hidden[i:i + batch], kwargs) for i in range(0, hidden.shape[0], batch)])


@torch.no_grad()
def _teacher_pass(teacher_layer, student_layer, hidden: torch.Tensor, kwargs: dict, batch: int,
                  moments: dict) -> torch.Tensor:
    """The teacher block's output on ``hidden``; fills ``moments`` with ``{name: X^T X}`` of the inputs of its
    linears (named as the student block's 1-bit layers)."""
    names = [n for n, m in student_layer.named_modules() if isinstance(m, OneBitLinear)]
    outputs = []
    shared: list = []  # (input, product): q/k/v (and gate/up) read the same tensor, one product per chunk
    handles = []
    for name in names:
        module = teacher_layer.get_submodule(name)

        def hook(mod, args, name=name):
            x = args[0]
            product = next((p for seen, p in shared if seen is x), None)
            if product is None:
                flat = x.detach().reshape(-1, x.shape[-1]).float()
                product = (flat.T @ flat).double()
                shared.append((x, product))  # the reference keeps x alive: identity cannot be reused
            moments[name] = moments.get(name, 0) + product

        handles.append(module.register_forward_pre_hook(hook))
    try:
        for i in range(0, hidden.shape[0], batch):
            shared.clear()
            outputs.append(run_block(teacher_layer, hidden[i:i + batch], kwargs))
    finally:
        shared.clear()
        for h in handles:
            h.remove()
    return torch.cat(outputs)


@torch.no_grad()
def _init_block_scales(student_layer, teacher_layer, moments: dict, config: BlockwiseConfig) -> None:
    """Start each 1-bit layer of the block from the teacher's weight: ``latent = W / g`` with ``g`` SVID's or the
    data-aware fit; the row scale (``scale_out``) as the binarizer of the schedule needs it."""
    for name, module in student_layer.named_modules():
        if not isinstance(module, OneBitLinear):
            continue
        weight = teacher_layer.get_submodule(name).weight.detach().float()
        g, h = module.scale_in.detach().float(), module.scale_out.detach().float()  # SVID's (from the load)
        codes = quantizer_for(module)(weight).detach()
        if config.scale_init in ("data", "gptq"):
            g, h = fit_scales(weight, codes, moments[name], g, h)
        latent = weight / torch.where(g.abs() > 1e-12, g, torch.full_like(g, 1e-12))
        if config.scale_init == "gptq":
            codes = gptq_codes(weight, moments[name], g, module.weight_format)
            g, h = fit_scales(weight, codes, moments[name], g, h)
            latent = codes_to_latent(codes, latent, module.weight_format)
        g = torch.where(g.abs() > 1e-12, g, torch.full_like(g, 1e-12))
        module.weight.copy_(latent)
        module.scale_in.copy_(g)
        # progressive: dual scaling computes S_l * S_a * F(W / S_a, t) with S_l = scale_out: S_l = 1 starts the
        # block as the teacher's (F is the identity at small t) and S_l learns the row scale of the hard end.
        # hard: the fitted row scale itself.
        module.scale_out.copy_(torch.ones_like(h) if config.schedule == "progressive" else h)


def _block_parameters(layer, config: BlockwiseConfig) -> list[dict]:
    latent, scales = [], []
    for module in layer.modules():
        if isinstance(module, OneBitLinear):
            latent.append(module.weight)
            scales += [module.scale_in, module.scale_out] + ([module.bias] if module.bias is not None else [])
    if config.train_norms:
        ids = {id(p) for p in latent + scales}
        scales += [p for p in layer.parameters() if id(p) not in ids and p.is_floating_point()]
    scale_lr = config.scale_lr if config.scale_lr is not None else 3.3 * config.lr
    return [{"params": latent, "lr": config.lr, "weight_decay": config.weight_decay},
            {"params": scales, "lr": scale_lr, "weight_decay": 0.0}]


def _t_at(step: int, steps: int, config: BlockwiseConfig) -> float:
    """Temperature of a block's step: ``phases`` phases whose ``t`` rises exponentially to ``t_end``."""
    phase = min(config.phases, 1 + step * config.phases // steps)
    return config.t_end * math.expm1(0.22 * phase) / math.expm1(0.22 * config.phases)


def _train_block(student_layer, x_in: torch.Tensor, target: torch.Tensor, kwargs: dict, config: BlockwiseConfig,
                 generator: torch.Generator) -> None:
    """Train one block towards ``target`` and leave it with the hard quantizer (the packed function)."""
    layers = [m for m in student_layer.modules() if isinstance(m, OneBitLinear)]
    temperature = Temperature(_t_at(0, config.steps, config))
    for module in layers:
        module.binarizer = (ProgressiveBinarizer(temperature, dual_scaling=True, weight_format=module.weight_format)
                            if config.schedule == "progressive" else quantizer_for(module))
    params = _block_parameters(student_layer, config)
    for group in params:
        for p in group["params"]:
            p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, betas=(0.9, 0.98))
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    n = x_in.shape[0]
    warmup = max(1, config.steps // 20)
    student_layer.train()
    for step in range(config.steps):
        temperature.t = _t_at(step, config.steps, config)
        factor = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / config.steps))
        for group, lr in zip(optimizer.param_groups, base_lrs):
            group["lr"] = lr * factor
        idx = torch.randint(n, (config.batch_size,), generator=generator)
        with torch.autocast(x_in.device.type, dtype=torch.bfloat16, enabled=config.bf16):
            out = run_block(student_layer, x_in[idx], kwargs)
        loss = block_error(out.float(), target[idx], config.loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    student_layer.eval()
    for module in layers:
        finalize_module_(module)  # hard quantizer, row scale folded into scale_out: the packed function
    for group in params:
        for p in group["params"]:
            p.grad = None


def block_error(out: torch.Tensor, target: torch.Tensor, kind: str = "output") -> torch.Tensor:
    """``"output"``: the squared error relative to the target's mean square over all numbers (dominated by the
    massive activations where a model has them); ``"token"``: :func:`token_relative_error`."""
    if kind == "token":
        return token_relative_error(out, target)
    return (out - target).pow(2).mean() / target.pow(2).mean().clamp_min(1e-30)


def token_relative_error(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of ``|out - target|^2 / |target|^2``: every token counts alike.

    Hidden states of LLaMA-style models carry "massive activations" - on SmolLM2-135M from block 12 on, token 0 holds
    two thirds of the squared norm and three channels 99 % of it (values ~25,000). A plain MSE would spend the block's
    training on reproducing those few numbers; the next block sees each token through an RMSNorm anyway."""
    err = (out - target).pow(2).sum(-1)
    return (err / target.pow(2).sum(-1).clamp_min(1e-12)).mean()


@torch.no_grad()
def _relative_error(layer, x_in, target, kwargs, batch, kind) -> float:
    return float(block_error(_run_all(layer, x_in, kwargs, batch), target, kind))


def blockwise_reconstruct_(student, teacher, calibration: torch.Tensor, config: BlockwiseConfig | None = None,
                           seed: int = 0, progress: bool = True, log=print) -> list[dict]:
    """Run the block-wise stage on ``student`` (a latent 1-bit model loaded with ``OneBitConfig(training=True)``)
    against ``teacher`` over the token ids ``calibration`` ``(n, seq)``; in place. Returns one record per block
    (relative output error of the hard student block before and after training, seconds).
    """
    config = config or BlockwiseConfig()
    if calibration.dim() != 2 or calibration.shape[0] < 1 or calibration.shape[1] < 2:
        raise ValueError(f"calibration: expected token ids of shape (n >= 1, seq >= 2), got {tuple(calibration.shape)}")
    s_layers, t_layers = decoder_layers(student), decoder_layers(teacher)
    if len(s_layers) != len(t_layers):
        raise ValueError(f"student has {len(s_layers)} blocks, teacher {len(t_layers)}; they must be the same model")
    if not any(isinstance(m, OneBitLinear) and m.is_latent for m in student.modules()):
        raise ValueError("the student has no latent OneBitLinear layer: load it with OneBitConfig(training=True)")
    batch = config.batch_size
    if calibration.shape[0] < batch:
        raise ValueError(f"calibration: {calibration.shape[0]} sequences, fewer than batch_size={batch}")
    calibration = calibration[: calibration.shape[0] // batch * batch]  # whole batches (masks have a batch size)
    generator = torch.Generator().manual_seed(seed)
    device = next(student.parameters()).device
    calibration = calibration.to(device)
    was_training = student.training, teacher.training
    trainable = {p: p.requires_grad for p in list(student.parameters()) + list(teacher.parameters())}
    student.eval()
    teacher.eval()
    teacher.requires_grad_(False)
    student.requires_grad_(False)
    x_t = torch.cat([capture_block_inputs(teacher, calibration[i:i + batch])[0]
                     for i in range(0, calibration.shape[0], batch)])
    _, kwargs = capture_block_inputs(teacher, calibration[:batch])
    x_s = x_t
    records = []
    tied = ties_input_scales(student)  # OneBitConfig(tie_input_scales=True): each block ends tied
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(s_layers) * config.steps, desc="hf_onebit: block-wise reconstruction", unit="step")
    try:
        for i, (s_layer, t_layer) in enumerate(zip(s_layers, t_layers)):
            start = time.perf_counter()
            x_in = x_s if config.inputs == "student" else x_t
            moments: dict = {}
            if config.scale_init != "svid" and x_in is x_t:  # one teacher pass gives the targets and the moments
                target = _teacher_pass(t_layer, s_layer, x_t, kwargs, batch, moments)
            else:
                target = _run_all(t_layer, x_t, kwargs, batch)
                if config.scale_init != "svid":
                    _teacher_pass(t_layer, s_layer, x_in, kwargs, batch, moments)
            with torch.no_grad():
                _init_block_scales(s_layer, t_layer, moments, config)
                if tied:  # the per-layer fit moved the shared g apart
                    tie_input_scales_(s_layer)
            before = None
            if config.report_start_error:
                for module in s_layer.modules():
                    if isinstance(module, OneBitLinear):  # the hard function of the start (row scale included)
                        module.binarizer = (ProgressiveBinarizer(Temperature(math.inf),
                                                                 weight_format=module.weight_format)
                                            if config.schedule == "progressive" else quantizer_for(module))
                before = _relative_error(s_layer, x_in, target, kwargs, batch, config.loss)
            if config.steps:
                with torch.enable_grad():
                    _train_block(s_layer, x_in, target, kwargs, config, generator)
            else:  # steps=0: the scale fit alone (post-training quantization), the hard quantizer as it is
                for module in s_layer.modules():
                    if isinstance(module, OneBitLinear):
                        module.binarizer = (ProgressiveBinarizer(Temperature(math.inf),
                                                                 weight_format=module.weight_format)
                                            if config.schedule == "progressive" else quantizer_for(module))
                        finalize_module_(module)
            if tied and config.steps:  # the block's own optimizer moved them apart again: re-tie before measuring
                tie_input_scales_(s_layer)
            out = _run_all(s_layer, x_in, kwargs, batch)  # the hard block: its error, and the next block's input
            after = float(block_error(out, target, config.loss))
            x_s = out if config.inputs == "student" else x_s
            x_t = target
            del out
            s_layer.requires_grad_(False)
            records.append({"block": i, "error_before": before, "error_after": after,
                            "seconds": time.perf_counter() - start})
            if bar is not None:
                bar.update(config.steps)
                bar.set_postfix(block=i, error=f"{after:.3g}")
    finally:
        if bar is not None:
            bar.close()
        student.train(was_training[0])
        teacher.train(was_training[1])
        for p, flag in trainable.items():
            p.requires_grad_(flag)
    return records
