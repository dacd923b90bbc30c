"""OneBitDistillationCallback: distillation of a latent 1-bit student inside the stock ``transformers.Trainer``.

A TrainerCallback sees the model and the optimizer but neither the inputs nor the loss, so the callback hooks the
student itself: a forward pre-hook captures ``input_ids`` / ``attention_mask`` / ``labels`` / ``num_items_in_batch``
(and asks the student for its hidden states), a forward hook runs the frozen teacher on the same inputs and returns
the student's outputs with ``loss`` replaced by the distillation loss (with an attention-relation term, hooks on
both models' Q / K / V projections record their outputs for it: :mod:`hf_onebit.training.relations`). The Trainer
back-propagates that loss as it would the model's own; gradient accumulation and multi-process runs follow the
Trainer's ``num_items_in_batch`` convention (see :mod:`hf_onebit.training.losses`). The hooks act only while the
student is in training mode.

The callback also owns the recipe's schedule (stage, phase and ``t`` per optimizer step), weight decay 0 in the last
phase, adaptive gradient clipping, the extra log entries (``t``, each loss term, sign flips) and a plot of them, the
latent-form Trainer checkpoints, and at the end of training the fold of every row scale into ``scale_out`` so that
``student.save_pretrained(out)`` writes a packed model with exactly the function measured after ``trainer.train()``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os

import torch
from transformers import TrainerCallback

from ..integration.quantizer import set_save_form
from ..integration.tying import keep_input_scales_tied, ties_input_scales
from ..ops.cpu.fpenv import set_flush_denormal
from .binarizers import Temperature, quantizer_for
from .heap import RetainedHeap
from .losses import DistillationLoss
from .optim import GROUP_KEY, AdaptiveGradClipper
from .recipes import (
    Recipe,
    apply_recipe_,
    default_recipe_for,
    finalize_,
    freeze_codes_all_,
    get_recipe,
    latent_layers,
    stage_of,
    start_main_stage_,
    unfreeze_codes_,
)
from .relations import ProjectionCapture
from .targets import TargetBlocks
from .teacher_cast import TeacherWeightCast, teacher_precision

logger = logging.getLogger(__name__)

STATE_FILE = "hf_onebit_distill_state.json"


class OneBitDistillationCallback(TrainerCallback):
    """Distil ``teacher`` into the latent 1-bit model the Trainer trains.

    Args:
        teacher: the full-precision model (frozen here; moved to the student's device at the start of training).
        recipe: ``"progressive"``, ``"onebit"``, ``"bitnet"`` or a :class:`~hf_onebit.training.recipes.Recipe`;
            None (default): the student's format's default, ``"progressive"`` for binary and ternary alike.
        loss: a :class:`~hf_onebit.training.losses.DistillationLoss` (default ``DistillationLoss()``: KL + the
            hidden-state term at ``DEFAULT_HIDDEN_WEIGHT``, falling to ``DEFAULT_HIDDEN_WEIGHT_END`` over the second
            half of the run, ``DEFAULT_HIDDEN_METRIC``; the weight in use is logged as ``hidden_weight``).
        adaptive_clip: clip gradients at ``clip_multiplier`` times the running EMA of the gradient norm (starting at
            ``clip_initial``); the Trainer's own ``max_grad_norm`` is switched off while it is on. Needs gradients
            that are not sharded (single process or DDP); use ``max_grad_norm`` with FSDP / DeepSpeed.
        final_weight_decay: weight decay of every parameter group in the last phase (None leaves it alone).
        track_sign_flips: log the fraction of latent weights whose sign changed since the previous log.
        plot: write ``distill_curves.png`` into ``args.output_dir`` at the end of training (needs matplotlib).
        targets: cached teacher targets (:func:`~hf_onebit.training.targets.teacher_targets`): the KL term uses them
            and the teacher does not run (the loss must have ``hidden_weight=0``).
        cast_teacher: with ``TrainingArguments(bf16=True)``, run the teacher under bf16 autocast too, with its
            linear weights run from bf16 copies made once per run (swapped in for each teacher forward only, so the
            teacher keeps its float32 weights between steps and after an error). False runs
            the teacher in its own dtype (the forward hook runs outside the Trainer's autocast).
        flush_denormals: flush denormal floats to zero on the CPU from the start of training to its end
            (:func:`~hf_onebit.ops.cpu.fpenv.set_flush_denormal`: on every thread of torch's pool, not only the
            calling one; off again afterwards). Late in a progressive run the tanh of many latent
            weights saturates, their gradients underflow, and arithmetic on denormal values (the optimizer's second
            moments first: AdamW is ~10x slower on them) slows every step.
        keep_heap: when the student trains on the CPU, keep freed memory in the process heap from the start of
            training to its end (:class:`~hf_onebit.training.heap.RetainedHeap`; glibc only, its defaults again
            afterwards), so that a step's large temporaries reuse pages instead of faulting fresh ones in (without it the
            forward and backward of a 2 x 64 step of SmolLM2-135M took 1.31x as long on an AMD EPYC Zen 4).
        **recipe_overrides: fields of the recipe or its schedule (``phases``, ``init_steps``, ``dual_scaling``, ...).
    """

    def __init__(self, teacher: torch.nn.Module, recipe: "str | Recipe | None" = None, loss: DistillationLoss | None = None, *,
                 adaptive_clip: bool = True, clip_multiplier: float = 2.0, clip_initial: float = 1.0,
                 final_weight_decay: float | None = 0.0, track_sign_flips: bool = True, plot: bool = True,
                 cast_teacher: bool = True, targets: TargetBlocks | None = None, flush_denormals: bool = True,
                 keep_heap: bool = True, **recipe_overrides: object):
        if teacher is None or not isinstance(teacher, torch.nn.Module):
            raise ValueError(f"teacher: got {type(teacher).__name__}; allowed: a torch.nn.Module (the float model)")
        if targets is not None and not isinstance(targets, TargetBlocks):
            raise ValueError(f"targets: got {type(targets).__name__}; allowed: None or the TargetBlocks of "
                             "hf_onebit.training.targets.teacher_targets")
        self.teacher = teacher.eval().requires_grad_(False)
        # With recipe=None the student's weight format decides (in prepare); validate the overrides now.
        self._recipe_overrides = dict(recipe_overrides)
        checked = get_recipe(recipe or "progressive", **recipe_overrides)
        self.recipe: Recipe | None = checked if recipe is not None else None
        self.loss = loss or DistillationLoss()
        if not isinstance(self.loss, DistillationLoss):
            raise ValueError(f"loss: got {type(self.loss).__name__}; allowed: a DistillationLoss")
        self.targets = targets
        if targets is not None and self.loss.needs_live_teacher:
            raise ValueError("targets: cached teacher targets carry no hidden states or attention projections; pass "
                             "loss=DistillationLoss(hidden_weight=0, attention_weight=0) (or distil without cached "
                             "targets)")
        if targets is not None and targets.temperature != self.loss.temperature:
            raise ValueError(f"targets: computed at temperature {targets.temperature}, the loss uses "
                             f"{self.loss.temperature}; compute them with teacher_targets(..., temperature=...)")
        self.clipper = AdaptiveGradClipper(clip_multiplier, clip_initial) if adaptive_clip else None
        self.final_weight_decay = final_weight_decay
        self.track_sign_flips = track_sign_flips
        self.plot = plot
        self.cast_teacher = cast_teacher
        if not isinstance(flush_denormals, bool):
            raise ValueError(f"flush_denormals: got {flush_denormals!r}; allowed: True or False")
        self.flush_denormals = flush_denormals
        self._flush_every_thread = False
        if not isinstance(keep_heap, bool):
            raise ValueError(f"keep_heap: got {keep_heap!r}; allowed: True or False")
        self.keep_heap = keep_heap
        self._heap: RetainedHeap | None = None
        self._tie_handle = None  # keeps tied input scales tied after each optimizer step (hf_onebit.integration.tying)
        self._teacher_cast: TeacherWeightCast | None = None
        self.temperature: Temperature | None = None
        self.history: list[dict] = []
        self._model = None
        self._handles = []
        self._captures: tuple[ProjectionCapture, ProjectionCapture] | None = None  # student's, teacher's
        self._ctx = None
        self._active = False
        self._sums: dict[str, float] = {}
        self._count = 0.0
        self._progress: float | None = None  # the fraction of the run done, set at every step's beginning
        self._signs = None
        self._frozen_step: int | None = None  # the step whose start froze the codes (Recipe.freeze_codes_at)

    # ----------------------------------------------------------------------------------------------- setup
    def prepare(self, model) -> None:
        """Apply the recipe to a freshly loaded student (idempotent; called by ``on_init_end``)."""
        if self._model is model:
            return
        latent_layers(model)  # raises a clear error for a packed / float model
        self._model = model
        if self.recipe is None:
            self.recipe = get_recipe(default_recipe_for(model), **self._recipe_overrides)
        self.temperature = apply_recipe_(model, self.recipe)

    def on_init_end(self, args, state, control, model=None, **kwargs):
        if model is not None:
            self.prepare(model)

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.prepare(model)
        self.recipe.schedule.check_total(state.max_steps) if self.recipe.progressive else None
        device = next(model.parameters()).device
        if self.flush_denormals:  # every thread of torch's pool where the student trains on the CPU
            self._flush_every_thread = device.type == "cpu"
            set_flush_denormal(True, every_thread=self._flush_every_thread)
        if self.keep_heap and self._heap is None and device.type == "cpu":
            self._heap = RetainedHeap()
        self.teacher.to(device)
        # fresh copies per run: a run that raised leaves its copies behind, possibly for another device or precision
        self._teacher_cast = TeacherWeightCast(self.teacher, torch.bfloat16) if self.cast_teacher and args.bf16 else None
        self._frozen_step = None
        if state.global_step > 0:
            self._restore(args, state)
            if self.recipe.progressive and state.global_step > self.recipe.init_steps and stage_of(model) == "init":
                # The checkpoint's latent weights were saved after the fold: install the main stage as it is.
                start_main_stage_(model, self.recipe, self.temperature, transform_weights=False)
            if self._frozen_step is not None:  # saved after the codes froze: their row scales are in scale_out
                freeze_codes_all_(model, _matmul_dtype(args, model), fold=False)
        if self.clipper is not None and args.max_grad_norm and args.max_grad_norm > 0:
            logger.info("hf_onebit: adaptive gradient clipping replaces max_grad_norm=%s", args.max_grad_norm)
            args.max_grad_norm = 0.0
        if optimizer is not None and len(optimizer.param_groups) == 1:
            logger.warning("hf_onebit: one optimizer parameter group; hf_onebit.training.onebit_optimizer gives the "
                           "latent weights and the scale vectors their own learning rate and weight decay")
        set_save_form(model, "latent")  # Trainer checkpoints keep the latent tensors (resumable)
        if optimizer is not None and ties_input_scales(model):  # OneBitConfig(tie_input_scales=True)
            self._tie_handle = keep_input_scales_tied(optimizer, model)
        self._install_hooks(model)
        self._snapshot_signs(model)
        self._active = True

    def on_step_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        step = state.global_step
        self._progress = step / max(state.max_steps, 1)  # the hidden-state term's weight follows it
        if self._frozen_step is None and self.recipe.codes_frozen_at(step, state.max_steps):
            freeze_codes_all_(model, _matmul_dtype(args, model))
            self._frozen_step = step
            logger.info("hf_onebit: codes frozen at step %d of %d; the scale vectors, norms and embeddings train on",
                        step, state.max_steps)
        if self.recipe.progressive:
            sched = self.recipe.schedule
            if sched.stage(step) == "main" and stage_of(model) == "init" and self._frozen_step is None:
                start_main_stage_(model, self.recipe, self.temperature, transform_weights=True)
                self._snapshot_signs(model)
            self.temperature.t = sched.t_at(step, state.max_steps)
        if optimizer is not None and self.final_weight_decay is not None:
            last = self._is_last_phase(step, state.max_steps)
            for group in optimizer.param_groups:
                group.setdefault("hf_onebit_weight_decay", group.get("weight_decay", 0.0))
                group["weight_decay"] = self.final_weight_decay if last else group["hf_onebit_weight_decay"]

    def _is_last_phase(self, step: int, total: int) -> bool:
        if self.recipe.progressive:
            return self.recipe.schedule.is_last_phase(step, total)
        if self.recipe.cooldown_at is not None:  # bitnet: weight decay off for the whole cool-down stage
            return self.recipe.in_cooldown(step, total)
        phases = self.recipe.schedule.phases  # onebit: the same fraction of the run as one progressive phase
        return step >= total - max(1, total // phases)

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self.clipper is not None and model is not None:
            self.clipper.clip_(p for p in model.parameters() if p.requires_grad)
        if optimizer is not None and self.recipe.in_cooldown(state.global_step, state.max_steps):
            # The Trainer's scheduler sets every group's lr after this step (from its base lr), so the factor
            # applies to this step only and never compounds.
            for group in optimizer.param_groups:
                group["lr"] *= self.recipe.cooldown_factor

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        if logs is None or "loss" not in logs:
            return
        extra = {"stage": 0.0 if self.recipe.progressive and state.global_step <= self.recipe.init_steps else 1.0}
        if self.recipe.cooldown_at is not None:
            extra["lr_factor"] = self.recipe.cooldown_factor if self.recipe.in_cooldown(state.global_step - 1,
                                                                                        state.max_steps) else 1.0
        if self.recipe.progressive:
            extra["t"] = self.temperature.t
            extra["phase"] = float(self.recipe.schedule.phase(max(state.global_step - 1, 0), state.max_steps))
        if self._count:
            for name, value in self._sums.items():
                extra[f"distill_{name}"] = value / self._count
            if "hidden" in self._sums:
                extra["hidden_weight"] = self.loss.hidden_weight_at(self._progress)
        self._sums, self._count = {}, 0.0
        if self.recipe.freeze_codes_at is not None:
            extra["codes_frozen"] = float(self._frozen_step is not None)
        if self.track_sign_flips and model is not None:
            extra["sign_flips"] = 0.0 if self._frozen_step is not None else self._sign_flip_fraction(model)
        if self.clipper is not None:
            extra["clip_threshold"] = self.clipper.threshold
        extra = {k: round(v, 6) for k, v in extra.items()}
        logs.update(extra)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(extra)
        self.history.append({"step": state.global_step, "loss": logs["loss"], **extra,
                             **({"learning_rate": logs["learning_rate"]} if "learning_rate" in logs else {})})

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if os.path.isdir(folder):
            with open(os.path.join(folder, STATE_FILE), "w") as fh:
                json.dump(self.state_dict(), fh, indent=1)

    def release(self) -> None:
        """Undo what ``on_train_begin`` changed outside the student's weights: the hooks, the heap setting, denormal
        flushing (idempotent). ``on_train_end`` calls it; the Trainer has no event for a run that raised, so
        :func:`~hf_onebit.training.pipeline.run_stages` calls it then (call it yourself after a failed
        ``trainer.train()``)."""
        self._active = False
        if self.flush_denormals:
            set_flush_denormal(False, every_thread=self._flush_every_thread)
        if self._heap is not None:
            self._heap.release()
            self._heap = None
        self._remove_hooks()
        if self._tie_handle is not None:
            self._tie_handle.remove()
            self._tie_handle = None

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.release()
        if model is not None:
            unfreeze_codes_(model)
            finalize_(model)
            set_save_form(model, "packed")
        self._teacher_cast = None  # frees the bf16 copies; the teacher never stopped holding its own weights
        self.teacher.to("cpu")
        if self.plot and state.is_world_process_zero and self.history:
            from .plot import plot_history

            plot_history(self.history, os.path.join(args.output_dir, "distill_curves.png"))

    # ----------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {"recipe": self.recipe.to_dict(), "clipper": self.clipper.state_dict() if self.clipper else None,
                "history": self.history, "codes_frozen_step": self._frozen_step}

    def _restore(self, args, state) -> None:
        path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}", STATE_FILE)
        if not os.path.isfile(path):
            logger.warning("hf_onebit: resuming at step %d without %s; the clipping EMA restarts", state.global_step, path)
            return
        with open(path) as fh:
            saved = json.load(fh)
        if saved.get("recipe") != json.loads(json.dumps(self.recipe.to_dict())):
            raise ValueError(f"{path}: the checkpoint was trained with recipe {saved.get('recipe')}, "
                             f"this callback has {self.recipe.to_dict()}; resume with the same recipe")
        if self.clipper is not None and saved.get("clipper"):
            self.clipper.load_state_dict(saved["clipper"])
        self.history = [h for h in saved.get("history", []) if h["step"] <= state.global_step]
        frozen = saved.get("codes_frozen_step")
        self._frozen_step = frozen if frozen is not None and frozen < state.global_step else None

    # ----------------------------------------------------------------------------------------------- hooks
    def _install_hooks(self, model) -> None:
        self._remove_hooks()
        self._handles = [
            model.register_forward_pre_hook(self._pre_forward, with_kwargs=True),
            model.register_forward_hook(self._post_forward, with_kwargs=True),
        ]
        if self.loss.needs_relations:
            layers = self.loss.attention_layers
            self._captures = (ProjectionCapture(model, layers), ProjectionCapture(self.teacher, layers))

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for capture in self._captures or ():
            capture.remove()
        self._captures = None

    def _pre_forward(self, module, args, kwargs):
        if not (self._active and module.training):
            return None
        kwargs = dict(kwargs)
        if args:
            kwargs["input_ids"] = args[0]
            args = ()
        if kwargs.get("input_ids") is None:
            raise ValueError("hf_onebit distillation: the batch has no input_ids (inputs_embeds is not supported)")
        ids = kwargs["input_ids"]
        topk = None
        if self.targets is not None:
            index, logp = self.targets.lookup(ids)
            topk = (index.to(ids.device), logp.to(ids.device))
        self._ctx = {
            "input_ids": ids,
            "attention_mask": kwargs.get("attention_mask"),
            "labels": kwargs.pop("labels", None),
            "num_items_in_batch": kwargs.pop("num_items_in_batch", None),
            "teacher_topk": topk,
        }
        kwargs["output_hidden_states"] = self.loss.needs_hidden_states
        kwargs["use_cache"] = False
        if self._captures is not None:  # records the student's projections until _post_forward
            self._captures[0].start()
        return args, kwargs

    def _post_forward(self, module, args, kwargs, output):
        ctx, self._ctx = self._ctx, None
        if ctx is None:
            return None
        relations = None
        if self._captures is not None:
            self._captures[0].stop()
        if ctx["teacher_topk"] is None:
            recording = self._captures[1].recording() if self._captures else contextlib.nullcontext()
            with torch.no_grad(), teacher_precision(self._teacher_cast, ctx["input_ids"].device.type), recording:
                teacher_out = self.teacher(input_ids=ctx["input_ids"], attention_mask=ctx["attention_mask"],
                                           output_hidden_states=self.loss.needs_hidden_states, use_cache=False)
            if self._captures is not None:
                student_capture, teacher_capture = self._captures
                relations = (student_capture.take(), teacher_capture.take(), student_capture.head_dim)
                if torch.is_grad_enabled() and not all(a.requires_grad for a in relations[0]):
                    self.release()
                    raise ValueError(
                        "attention_weight > 0: the student's Q / K / V projections carry no gradient, so the "
                        "attention-relation term would train nothing (reentrant activation checkpointing recomputes "
                        "them outside autograd); allowed: activation checkpointing with use_reentrant=False "
                        "(transformers' default) or none, or attention_weight=0")
        else:
            teacher_out = {}  # the batch carries the teacher's cached top-k targets: the teacher does not run
        mask = self.loss.token_mask(ctx["input_ids"], ctx["attention_mask"], ctx["labels"])
        terms = self.loss.terms(output.logits, teacher_out.get("logits"), mask, output.get("hidden_states"),
                                teacher_out.get("hidden_states"), ctx["labels"], teacher_topk=ctx["teacher_topk"],
                                relations=relations, attention_mask=ctx["attention_mask"])
        total = self.loss.combine(terms, self._progress)
        count = float(mask.sum())
        n = ctx["num_items_in_batch"]
        loss = total / (n.to(total.device) if torch.is_tensor(n) else n) if n is not None else total / max(count, 1.0)
        for name, value in terms.items():
            self._sums[name] = self._sums.get(name, 0.0) + float(value.detach())
        self._count += count
        fields = {k: v for k, v in output.items() if k not in ("loss", "hidden_states")}
        return type(output)(loss=loss, **fields)

    # ----------------------------------------------------------------------------------------------- sign flips
    # ("sign flips" of a ternary layer count changed codes: -1 / 0 / +1 of its hard quantizer)
    @torch.no_grad()
    def _snapshot_signs(self, model) -> None:
        self._signs = [_codes(m) for _, m in latent_layers(model)] if self.track_sign_flips else None

    @torch.no_grad()
    def _sign_flip_fraction(self, model) -> float:
        if self._signs is None:
            self._snapshot_signs(model)
            return 0.0
        flipped = total = 0
        new = []
        for old, (_, m) in zip(self._signs, latent_layers(model)):
            cur = _codes(m)
            flipped += int((cur != old).sum())
            total += cur.numel()
            new.append(cur)
        self._signs = new
        return flipped / max(total, 1)


def _matmul_dtype(args, model) -> torch.dtype:
    """The dtype the student's matmuls run in under ``args``: the autocast dtype with bf16 / fp16, else its own."""
    if args.bf16:
        return torch.bfloat16
    if args.fp16:
        return torch.float16
    return next(model.parameters()).dtype


def _codes(module) -> torch.Tensor:
    """What packing would store for a latent layer: the sign (binary) or the ternary code (int8) of each weight."""
    return module.format.codes(module.weight)
