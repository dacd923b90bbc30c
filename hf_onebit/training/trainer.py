"""OneBitDistillationTrainer: a convenience ``Trainer`` whose optimizer has hf_onebit's three parameter groups.

Nothing here is required: the stock ``Trainer`` with :class:`OneBitDistillationCallback` (and optionally
``optimizers=(onebit_optimizer(model, ...), None)``) does the same.
"""

from __future__ import annotations

from transformers import Trainer

from .callback import OneBitDistillationCallback
from .optim import onebit_optimizer


class OneBitDistillationTrainer(Trainer):
    """``Trainer`` + AdamW over [latent weights, scale vectors, embeddings] (:func:`onebit_optimizer`): the latent
    weights at ``args.learning_rate`` and ``args.weight_decay``, the scale vectors at ``scale_lr`` (default 3.3x the
    learning rate), the embedding matrices at ``embedding_lr`` (default the learning rate), both with
    ``scale_weight_decay``; Adam's betas and epsilon from ``args``. A ``train()`` that raises releases every
    :class:`OneBitDistillationCallback` among its callbacks (hooks, heap setting, denormal flushing) before the error
    goes on, which the stock ``Trainer`` has no event for."""

    def __init__(self, *args, scale_lr: float | None = None, scale_weight_decay: float = 0.0,
                 embedding_lr: float | None = None, **kwargs):
        self.scale_lr = scale_lr
        self.scale_weight_decay = scale_weight_decay
        self.embedding_lr = embedding_lr
        super().__init__(*args, **kwargs)

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            args = self.args
            self.optimizer = onebit_optimizer(model or self.model, lr=args.learning_rate, scale_lr=self.scale_lr,
                                              weight_decay=args.weight_decay,
                                              scale_weight_decay=self.scale_weight_decay,
                                              betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon,
                                              embedding_lr=self.embedding_lr)
        return self.optimizer

    def train(self, *args, **kwargs):
        try:
            return super().train(*args, **kwargs)
        except BaseException:
            for callback in self.callback_handler.callbacks:
                if isinstance(callback, OneBitDistillationCallback):
                    callback.release()
            raise
