"""Distillation in stages, as one call: block-wise reconstruction, then end-to-end distillation in the Trainer.

    plan = DistillPlan(stages=("blockwise", "e2e"), blockwise_steps=64, e2e_steps=100)
    summary = run_stages(student, teacher, data, plan, output_dir="run")

``hf-onebit distill`` and the main job (``examples/main_job.py``) are thin wrappers around :func:`run_stages`; with a
time budget, :func:`plan_for_budget` measures this machine and sizes the stages first. Each stage is also usable on its
own: :func:`~hf_onebit.training.blockwise.blockwise_reconstruct_` before any ``Trainer`` run, and
:class:`~hf_onebit.training.callback.OneBitDistillationCallback` inside one.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field

import torch

from ..formats import get_format
from .attention import check_choice as check_attention
from .attention import training_attention
from .blockwise import BlockwiseConfig, blockwise_reconstruct_, decoder_layers
from .data import TokenBlocks
from .losses import DistillationLoss
from .optim import DEFAULT_BETAS, embedding_learning_rate

STAGES = ("blockwise", "e2e")
#: Fewest calibration sequences of the block-wise stage (the scale fit estimates ``X^T X`` from them).
MIN_CALIBRATION = 64
#: The end-to-end recipe after a block-wise stage: the format's hard quantizer with a straight-through gradient,
#: starting from the scales the block-wise stage left (``progressive`` would restart from the float weights).
RECIPE_AFTER_BLOCKWISE = {"binary": "onebit", "ternary": "bitnet"}


@dataclass(frozen=True)
class DistillPlan:
    """What :func:`run_stages` does (every field has the default of ``hf-onebit distill``)."""

    # ("blockwise", "e2e") for both (tied at a 15-minute CPU budget, docs/benchmarks-quality.md)
    stages: tuple = ("e2e",)
    blockwise_steps: int = 64  # per block
    calibration_sequences: int | None = None  # default: each seen twice, at least MIN_CALIBRATION
    blockwise: BlockwiseConfig = field(default_factory=BlockwiseConfig)
    e2e_steps: int = 100
    batch_size: int = 4
    seq_len: int = 256
    grad_accum: int = 1
    recipe: str | None = None  # end-to-end recipe; default: RECIPE_AFTER_BLOCKWISE, or the format's default
    lr: float | None = None
    scale_lr: float | None = None
    embedding_lr: float | None = None  # None: the embedding matrices train at the latent weights' lr
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    min_lr_rate: float = 0.05  # the cosine ends at this fraction of the learning rates
    adam_beta1: float = DEFAULT_BETAS[0]  # Adam's first-moment (momentum) decay
    adam_beta2: float = DEFAULT_BETAS[1]  # Adam's second-moment decay
    loss: DistillationLoss = field(default_factory=DistillationLoss)
    cache_targets: int = 0  # top-k teacher targets cached once (0: the teacher runs every step)
    cache_epochs: float = 2.0  # with cache_targets: times each cached sequence is seen (sets how many are cached)
    recipe_overrides: dict = field(default_factory=dict)
    bf16: bool = False
    #: the attention implementation both models train on (:mod:`hf_onebit.training.attention`): ``auto`` is eager
    #: for bf16 on a CPU (faster there than the fused kernel) and each model's own elsewhere
    attn_implementation: str = "auto"
    seed: int = 0
    #: ``time.monotonic()`` by which the end-to-end stage should end: the stage re-sizes its step count to it from
    #: its own step times (:mod:`hf_onebit.training.deadline`); :func:`~hf_onebit.training.budget.plan_for_budget`
    #: sets it. None: exactly ``e2e_steps`` steps.
    deadline: float | None = None

    def __post_init__(self):
        stages = tuple(self.stages)
        if not stages or any(s not in STAGES for s in stages) or len(set(stages)) != len(stages):
            raise ValueError(f"stages: got {self.stages!r}; allowed: one or both of {STAGES}, each once")
        object.__setattr__(self, "stages", tuple(s for s in STAGES if s in stages))
        for name in ("blockwise_steps", "e2e_steps", "batch_size", "seq_len", "grad_accum"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name.endswith("steps") else 1):
                raise ValueError(f"{name}: got {value!r}; allowed: an integer >= "
                                 f"{0 if name.endswith('steps') else 1}")
        embedding_learning_rate(1.0, self.embedding_lr)  # refuses a bad value here, before any model work
        if not (isinstance(self.min_lr_rate, (int, float)) and 0 <= self.min_lr_rate <= 1):
            raise ValueError(f"min_lr_rate: got {self.min_lr_rate!r}; allowed: a number from 0 to 1")
        for name in ("adam_beta1", "adam_beta2"):
            beta = getattr(self, name)
            if isinstance(beta, bool) or not (isinstance(beta, (int, float)) and 0 <= beta < 1):
                raise ValueError(f"{name}: got {beta!r}; allowed: a number in [0, 1)")
        if not self.cache_epochs >= 1:
            raise ValueError(f"cache_epochs: got {self.cache_epochs!r}; allowed: a number >= 1")
        check_attention(self.attn_implementation)
        if self.cache_targets < 0:
            raise ValueError(f"cache_targets: got {self.cache_targets!r}; allowed: 0 (off) or k >= 1")
        if self.cache_targets and self.loss.needs_live_teacher:
            raise ValueError("cache_targets: cached teacher targets carry no hidden states or attention projections; "
                             "use a loss with hidden_weight=0 and attention_weight=0")
        if self.recipe == "progressive" and "blockwise" in self.stages:
            raise ValueError("recipe: 'progressive' restarts from the float weights and would discard the block-wise "
                             "stage; allowed after it: 'onebit' (binary) or 'bitnet'")

    @property
    def calibration(self) -> int:
        if self.calibration_sequences is not None:
            return self.calibration_sequences
        from .budget import calibration_sequences

        return max(calibration_sequences(self.blockwise_steps, self.batch_size),
                   MIN_CALIBRATION // self.batch_size * self.batch_size)

    def e2e_recipe(self, weight_format: str) -> str:
        if self.recipe is not None:
            return self.recipe
        if "blockwise" in self.stages:
            return RECIPE_AFTER_BLOCKWISE[weight_format]
        return get_format(weight_format).default_recipe

    def sequences_needed(self, world_size: int = 1) -> int:
        """Training sequences for one pass of the end-to-end stage, or the calibration set, whichever is more."""
        e2e = self.e2e_steps * self.batch_size * self.grad_accum * world_size if "e2e" in self.stages else 0
        return max(e2e, self.calibration if "blockwise" in self.stages else 0, 1)


def calibration_blocks(data: TokenBlocks, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` sequences of ``data`` (a seeded random choice; all of them when there are fewer)."""
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    return data.blocks[order[: min(n, len(data))]]


def run_stages(student, teacher, data: TokenBlocks, plan: DistillPlan, output_dir: str, resume: str | None = None,
               save_steps: int = 0, progress: bool = True, log=print) -> dict:
    """Run ``plan`` on a latent student (``OneBitConfig(training=True)``); returns a summary (per-stage seconds,
    tokens, records, the Trainer's log). The student ends in its hard (packed) function. Both models run on
    ``plan.attn_implementation`` while the stages train and on their own implementation afterwards."""
    with training_attention((student, teacher), plan.attn_implementation, plan.bf16) as attention:
        summary = _run_stages(student, teacher, data, plan, output_dir, resume, save_steps, progress, log)
    summary["attn_implementation"] = attention or "model"  # "model": each model's own
    return summary


def _run_stages(student, teacher, data, plan, output_dir, resume, save_steps, progress, log) -> dict:
    from transformers import ProgressCallback, Trainer, TrainingArguments

    from .callback import OneBitDistillationCallback
    from .deadline import DeadlineCallback, StepCount, cosine_schedule
    from .optim import learning_rates, onebit_optimizer
    from .recipes import get_recipe, weight_format_of
    from .targets import teacher_targets

    summary: dict = {"stages": list(plan.stages)}
    weight_format = weight_format_of(student)
    if "blockwise" in plan.stages:  # 0 steps: each block's scale fit alone
        config = dataclasses.replace(plan.blockwise, steps=plan.blockwise_steps, batch_size=plan.batch_size,
                                     bf16=plan.blockwise.bf16 or plan.bf16)
        calib = calibration_blocks(data, plan.calibration, plan.seed)
        log(f"== block-wise reconstruction: {len(decoder_layers(student))} blocks x {config.steps} steps, "
            f"{calib.shape[0]} calibration sequences of {calib.shape[1]} tokens")
        start = time.perf_counter()
        records = blockwise_reconstruct_(student, teacher, calib, config, seed=plan.seed, progress=progress)
        summary["blockwise"] = {"seconds": time.perf_counter() - start, "steps_per_block": config.steps,
                                "calibration_sequences": int(calib.shape[0]),
                                "tokens_per_block": config.steps * config.batch_size * calib.shape[1],
                                "records": records}
    if "e2e" in plan.stages and plan.e2e_steps > 0:
        recipe = plan.e2e_recipe(weight_format)
        lr, scale_lr = learning_rates(recipe, plan.lr, plan.scale_lr)
        args = TrainingArguments(
            output_dir=output_dir, max_steps=plan.e2e_steps, per_device_train_batch_size=plan.batch_size,
            gradient_accumulation_steps=plan.grad_accum, learning_rate=lr, weight_decay=plan.weight_decay,
            logging_steps=max(1, plan.e2e_steps // 50), save_strategy="steps" if save_steps else "no",
            save_steps=save_steps or 500, report_to=[], seed=plan.seed, bf16=plan.bf16, dataloader_num_workers=0,
            dataloader_pin_memory=torch.cuda.is_available(),
            disable_tqdm=not progress, use_cpu=plan.bf16 and not torch.cuda.is_available(),
        )
        world = max(args.world_size, 1)
        targets = None
        start = time.perf_counter()
        if plan.cache_targets:
            # only the sequences the stage will see, each plan.cache_epochs times
            needed = math.ceil(plan.e2e_steps * plan.batch_size * plan.grad_accum * world / plan.cache_epochs)
            data = TokenBlocks(calibration_blocks(data, max(needed, plan.batch_size * world), plan.seed + 1))
            log(f"== teacher targets: top-{plan.cache_targets} of every position of {len(data)} sequences, "
                "computed once")
            data = targets = teacher_targets(teacher, data, k=plan.cache_targets, batch_size=plan.batch_size,
                                             temperature=plan.loss.temperature, progress=progress)
        cache_s = time.perf_counter() - start
        overrides = dict(plan.recipe_overrides)
        if recipe == "progressive":
            overrides["init_steps"] = min(overrides.get("init_steps", get_recipe(recipe).init_steps),
                                          plan.e2e_steps - 1)
        callback = OneBitDistillationCallback(teacher, recipe=recipe, loss=plan.loss, targets=targets, **overrides)
        embedding_lr = embedding_learning_rate(lr, plan.embedding_lr)
        optimizer = onebit_optimizer(student, lr=lr, scale_lr=scale_lr, weight_decay=plan.weight_decay,
                                     embedding_lr=embedding_lr, betas=(plan.adam_beta1, plan.adam_beta2))
        count = StepCount(plan.e2e_steps)
        scheduler = cosine_schedule(optimizer, max(1, round(plan.warmup_ratio * plan.e2e_steps)), count,
                                    min_lr_rate=plan.min_lr_rate)
        callbacks = [callback]
        if plan.deadline is not None:
            # the steps the data holds: whole epochs of it, as many as the planned steps need
            per_epoch = max(1, len(data) // (plan.batch_size * plan.grad_accum * world))
            callbacks.append(DeadlineCallback(plan.deadline, count,
                                              per_epoch * max(1, math.ceil(plan.e2e_steps / per_epoch))))
        trainer = Trainer(model=student, args=args, train_dataset=data, callbacks=callbacks,
                          optimizers=(optimizer, scheduler))
        if plan.deadline is not None:  # the progress bar shows the re-sized step count
            callbacks[-1].progress = next((c for c in trainer.callback_handler.callbacks
                                           if isinstance(c, ProgressCallback)), None)
        log(f"== end-to-end distillation: {plan.e2e_steps} steps of {plan.batch_size * plan.grad_accum} x "
            f"{plan.seq_len} tokens, recipe {recipe}, learning rates {lr:g} / {scale_lr:g} / {embedding_lr:g} "
            "(latent weights / scales / embeddings)")
        start = time.perf_counter()
        try:
            trainer.train(resume_from_checkpoint=resume)
        except BaseException as err:
            callback.release()  # the Trainer has no event for a run that raised
            if not isinstance(err, ValueError) or resume is None or "parameter group" not in str(err):
                raise
            raise ValueError(
                f"resume: the checkpoint {resume!r} holds an optimizer state for other parameter groups than this "
                f"version's {len(optimizer.param_groups)} (latent weights, scale vectors, embedding matrices; an "
                f"older hf_onebit wrote two) - torch: {err}. That run cannot be continued; start a new one") from err
        steps = trainer.state.global_step
        summary["e2e"] = {"seconds": time.perf_counter() - start, "target_cache_seconds": cache_s,
                          "steps": steps, "planned_steps": plan.e2e_steps,
                          "replans": callbacks[-1].replans if plan.deadline is not None else [], "recipe": recipe,
                          "lr": lr, "scale_lr": scale_lr, "embedding_lr": embedding_lr,
                          "tokens": steps * plan.batch_size * plan.grad_accum * plan.seq_len * world,
                          "log": [h for h in trainer.state.log_history if "loss" in h],
                          "tail_mass": targets.tail_mass() if targets is not None else None}
    else:
        from .recipes import finalize_

        finalize_(student)
    return summary


def card_facts(summary: dict) -> dict:
    """What the model card records of a :func:`run_stages` summary (``hub.set_card_info(model, **card_facts(s))``):
    the stages and recipe, and the tokens, steps and seconds of the run."""
    stages = []
    if "blockwise" in summary:
        stages.append(f"block-wise ({summary['blockwise']['steps_per_block']} steps per block)")
    if "e2e" in summary:
        stages.append(f"end-to-end {summary['e2e']['recipe']}")
    budget = {"tokens": summary.get("tokens", 0), "time_s": round(summary.get("wall_s", 0.0))}
    if "e2e" in summary:
        budget["steps"] = summary["e2e"]["steps"]
    return {"recipe": " + ".join(stages) or "none", "distillation": budget}
