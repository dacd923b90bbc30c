"""OneBitDistillationTrainer: a convenience ``Trainer`` whose optimizer has hf_onebit's two parameter groups.

Nothing here is required: the stock ``Trainer`` with :class:`OneBitDistillationCallback` (and optionally
``optimizers=(onebit_optimizer(model, ...), None)``) does the same.
"""

from __future__ import annotations

from transformers import Trainer

from .optim import onebit_param_groups


class OneBitDistillationTrainer(Trainer):
    """``Trainer`` + AdamW over [latent weights, scale vectors] with ``scale_lr`` / ``weight_decay`` per group."""

    def __init__(self, *args, scale_lr: float | None = None, scale_weight_decay: float = 0.0, **kwargs):
        self.scale_lr = scale_lr
        self.scale_weight_decay = scale_weight_decay
        super().__init__(*args, **kwargs)

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            import torch

            args = self.args
            groups = onebit_param_groups(model or self.model, lr=args.learning_rate, scale_lr=self.scale_lr,
                                         weight_decay=args.weight_decay, scale_weight_decay=self.scale_weight_decay)
            self.optimizer = torch.optim.AdamW(groups, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)
        return self.optimizer
