"""The distillation loss: KL on logits (with temperature) + hidden-state MSE + optional CE on labels.

Every term is a per-token quantity over the positions that predict a next token (position ``p`` predicts token
``p + 1``; a position counts when label ``p + 1`` is not ``-100``, or, without labels, when both tokens are attended).
The loss is the sum over counted tokens divided by ``num_items_in_batch`` when the Trainer passes it (then the
division spans all micro-batches of a gradient-accumulation step and all processes, like the model's own CE), or
the mean over this micro-batch's counted tokens otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


@dataclass(frozen=True)
class DistillationLoss:
    """Weights of the loss terms.

    Args:
        kl_weight: weight of ``KL(teacher || student)`` on the next-token distributions (summed over the vocabulary).
        temperature: softmax temperature of the KL term (the term is multiplied by ``temperature ** 2``).
        hidden_weight: ``alpha``: weight of the hidden-state term, the mean over layers of
            ``|| h_s / |h_s| - h_t / |h_t| ||^2`` per token (in [0, 4]; OneBit's MSE between L2-normalised states).
        ce_weight: weight of the cross-entropy on the labels (the ordinary LM loss).
        hidden_layers: ``"all"`` (every layer output, the embedding output excluded) or ``"last"``.
    """

    kl_weight: float = 1.0
    temperature: float = 1.0
    hidden_weight: float = 1.0
    ce_weight: float = 0.0
    hidden_layers: str = "all"

    def __post_init__(self):
        for name in ("kl_weight", "hidden_weight", "ce_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"DistillationLoss.{name}: got {value!r}; allowed: a number >= 0")
        if not self.kl_weight + self.hidden_weight + self.ce_weight > 0:
            raise ValueError("DistillationLoss: kl_weight, hidden_weight and ce_weight are all 0; allowed: one > 0")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) or self.temperature <= 0:
            raise ValueError(f"DistillationLoss.temperature: got {self.temperature!r}; allowed: a number > 0")
        if self.hidden_layers not in ("all", "last"):
            raise ValueError(f"DistillationLoss.hidden_layers: got {self.hidden_layers!r}; allowed: 'all' or 'last'")

    @property
    def needs_hidden_states(self) -> bool:
        return self.hidden_weight > 0

    def token_mask(self, input_ids: torch.Tensor, attention_mask=None, labels=None) -> torch.Tensor:
        """Bool ``(batch, seq - 1)``: which positions predict a counted next token."""
        if labels is not None:
            return labels[:, 1:] != IGNORE_INDEX
        if attention_mask is not None:
            am = attention_mask.bool()
            return am[:, 1:] & am[:, :-1]
        return torch.ones(input_ids.shape[0], input_ids.shape[1] - 1, dtype=torch.bool, device=input_ids.device)

    def terms(self, student_logits, teacher_logits, mask, student_hidden=None, teacher_hidden=None, labels=None):
        """Per-term token sums ``{"kl", "hidden", "ce"}`` (only the enabled ones) over the ``mask`` positions."""
        out = {}
        s = student_logits[:, :-1][mask].float()
        if self.kl_weight > 0:
            t = teacher_logits[:, :-1][mask].float()
            tau = self.temperature
            log_p_s = F.log_softmax(s / tau, dim=-1)
            log_p_t = F.log_softmax(t / tau, dim=-1)
            kl = F.kl_div(log_p_s, log_p_t, log_target=True, reduction="sum")
            out["kl"] = kl * (tau * tau)
        if self.hidden_weight > 0:
            if student_hidden is None or teacher_hidden is None:
                raise ValueError("hidden_weight > 0 needs the hidden states of student and teacher")
            layers = range(1, len(student_hidden)) if self.hidden_layers == "all" else [len(student_hidden) - 1]
            total = 0.0
            for i in layers:
                hs = F.normalize(student_hidden[i][:, :-1][mask].float(), dim=-1)
                ht = F.normalize(teacher_hidden[i][:, :-1][mask].float(), dim=-1)
                total = total + (hs - ht).pow(2).sum()
            out["hidden"] = total / len(layers)
        if self.ce_weight > 0:
            if labels is None:
                raise ValueError("ce_weight > 0 needs labels in the batch")
            out["ce"] = F.cross_entropy(s, labels[:, 1:][mask], reduction="sum")
        return out

    def combine(self, terms: dict) -> torch.Tensor:
        weights = {"kl": self.kl_weight, "hidden": self.hidden_weight, "ce": self.ce_weight}
        return sum(weights[name] * value for name, value in terms.items())
