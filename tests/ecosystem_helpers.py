"""Helpers shared by the ecosystem tests (PEFT, Trainer, compile, offload, Hub, CLI, examples)."""

from __future__ import annotations

import os

import torch

import hf_onebit
from hf_onebit.fixtures.tiny_model import save_tiny_llama


def onebit_checkpoint(root, name: str = "onebit", **config_kwargs) -> tuple[str, str]:
    """Save a tiny float Llama and its packed 1-bit version under ``root``; return ``(float_dir, onebit_dir)``."""
    from transformers import AutoModelForCausalLM

    float_dir = save_tiny_llama(os.path.join(root, f"{name}-float"), **config_kwargs)
    onebit_dir = os.path.join(root, name)
    model = AutoModelForCausalLM.from_pretrained(float_dir, quantization_config=hf_onebit.OneBitConfig())
    model.save_pretrained(onebit_dir)
    return float_dir, onebit_dir


class FixedBatches(torch.utils.data.Dataset):
    """Causal-LM samples (labels = inputs) from a fixed tensor of token ids."""

    def __init__(self, ids: torch.Tensor):
        self.ids = ids

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def train_losses(model, ids: torch.Tensor, output_dir: str, steps: int, lr: float, batch: int = 4,
                 gradient_checkpointing: bool = False, use_cpu: bool = True) -> list[float]:
    """Train ``model`` with the stock Trainer on ``ids`` and return the per-step losses."""
    from transformers import Trainer, TrainingArguments

    from hf_onebit.integration.compat import checkpointing_kwargs

    args = TrainingArguments(
        output_dir=output_dir, max_steps=steps, per_device_train_batch_size=batch, learning_rate=lr,
        lr_scheduler_type="constant", warmup_steps=0, logging_steps=1, save_strategy="no", report_to=[],
        use_cpu=use_cpu, disable_tqdm=True, seed=0, **checkpointing_kwargs(gradient_checkpointing),
    )
    trainer = Trainer(model=model, args=args, train_dataset=FixedBatches(ids))
    trainer.train()
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def assert_loss_decreases(losses: list[float], factor: float = 0.97) -> None:
    first = sum(losses[:2]) / 2
    last = sum(losses[-2:]) / 2
    assert last < first * factor, f"loss did not go down: {losses}"
