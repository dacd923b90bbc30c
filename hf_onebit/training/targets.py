"""Cached teacher targets: the teacher's top-``k`` next-token distribution per position, computed once.

When the training text is fixed, the teacher's answer for every position never changes, yet a distillation step runs
the teacher again each time a sequence is seen. :func:`teacher_targets` runs it once over the whole dataset and keeps,
per position, the ``k`` most likely next tokens and their log-probabilities (``k = 64``: ``k x 6`` bytes a token).
The result is the dataset for the Trainer *and* the callback's ``targets=`` argument::

    data = teacher_targets(teacher, data, k=64)
    callback = OneBitDistillationCallback(teacher, targets=data, loss=DistillationLoss(hidden_weight=0))
    Trainer(model=student, args=args, train_dataset=data, callbacks=[callback]).train()

The callback finds each batch row's targets by its token ids (any collator, order or sampler works) and uses
:func:`~hf_onebit.training.losses.sparse_kl_token_sum` instead of running the teacher (see that function for what is
kept and the bias of dropping the rest: the student's mass outside the teacher's top ``k`` is constrained in total
only). The hidden-state term needs the teacher's hidden states, which are not cached: with cached targets the loss
is the KL (and CE) alone.

It pays off when sequences are seen more than once (a step saves the teacher's forward, about a quarter of a
distillation step), and it frees the teacher's memory during training.
"""

from __future__ import annotations

import torch

from .data import TokenBlocks

class TargetBlocks(TokenBlocks):
    """:class:`TokenBlocks` whose teacher top-``k`` targets are known for every position (see the module docstring);
    items are those of :class:`TokenBlocks`, :meth:`lookup` finds the targets of a batch."""

    def __init__(self, blocks: torch.Tensor, topk_index: torch.Tensor, topk_logp: torch.Tensor,
                 temperature: float = 1.0):
        super().__init__(blocks)
        if topk_index.shape[:2] != self.blocks.shape or topk_logp.shape != topk_index.shape:
            raise ValueError(f"targets {tuple(topk_index.shape)} / {tuple(topk_logp.shape)} do not match the blocks "
                             f"{tuple(self.blocks.shape)}")
        self.topk_index, self.topk_logp, self.temperature = topk_index, topk_logp, float(temperature)
        self._rows = {}
        for i, row in enumerate(self.blocks):
            self._rows.setdefault(row.numpy().tobytes(), i)

    def lookup(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(index, logp)`` of shape ``(batch, seq, k)`` for the rows of ``input_ids`` (each must be a block of this
        dataset, compared token by token)."""
        rows = []
        for row in input_ids.detach().to("cpu", torch.long):
            i = self._rows.get(row.numpy().tobytes())
            if i is None or not torch.equal(self.blocks[i], row):
                raise ValueError("cached teacher targets: a batch row is not one of the cached sequences (train on "
                                 "the TargetBlocks the targets were computed for)")
            rows.append(i)
        return self.topk_index[rows], self.topk_logp[rows]

    @property
    def k(self) -> int:
        return self.topk_index.shape[-1]

    def tail_mass(self) -> float:
        """Mean teacher probability outside the kept top ``k`` (what the cached loss only sees in total)."""
        return float((1 - self.topk_logp.float().exp().sum(-1)).clamp_min(0).mean())


@torch.no_grad()
def teacher_targets(teacher, data: TokenBlocks, k: int = 64, batch_size: int = 8, temperature: float = 1.0,
                    dtype: torch.dtype = torch.float16, progress: bool = True) -> TargetBlocks:
    """Run ``teacher`` once over ``data`` and return :class:`TargetBlocks` with its top-``k`` log-probabilities
    (at ``temperature``, stored as ``dtype``) for every position."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k: got {k!r}; allowed: an integer >= 1")
    if not temperature > 0:
        raise ValueError(f"temperature: got {temperature!r}; allowed: a number > 0")
    blocks = data.blocks
    n, seq = blocks.shape
    k = min(k, teacher.config.vocab_size)
    index = torch.empty(n, seq, k, dtype=torch.int32)
    logp = torch.empty(n, seq, k, dtype=dtype)
    device = next(teacher.parameters()).device
    was_training = teacher.training
    teacher.eval()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n * seq, desc="hf_onebit: teacher targets", unit="tok", unit_scale=True)
    try:
        for start in range(0, n, batch_size):
            ids = blocks[start:start + batch_size].to(device)
            logits = teacher(input_ids=ids, use_cache=False).logits.float()
            values, order = torch.log_softmax(logits / temperature, dim=-1).topk(k, dim=-1)
            index[start:start + ids.shape[0]] = order.to(torch.int32).cpu()
            logp[start:start + ids.shape[0]] = values.to(dtype).cpu()
            if bar is not None:
                bar.update(ids.numel())
    finally:
        teacher.train(was_training)
        if bar is not None:
            bar.close()
    return TargetBlocks(blocks, index, logp, temperature)
