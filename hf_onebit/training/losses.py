"""The distillation loss: KL on logits (with temperature) + hidden-state MSE + optional attention relations and CE.

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

from .relations import relation_kl_token_sum

IGNORE_INDEX = -100
#: weight of the hidden-state term by default: on SmolLM2-135M at 560 steps of 2 x 64 tokens (validation split, AMD
#: EPYC Zen 4, bf16) weights 1 / 3 / 10 / 30 ended at 277.0 / 269.6 / 254.8 / 252.7 perplexity with latent lr 1e-3,
#: and 30 with lr 2e-3 1.04x / 1.08x closer than 10 with 1e-3 on two seeds; at 60 minutes of 4 x 256 tokens a step
#: (AMD EPYC Zen 5) 10 and 100 ended 1.02x and 1.05x further than 30 (docs/benchmarks-quality-zen5.md)
DEFAULT_HIDDEN_WEIGHT = 30.0
#: the hidden-state term's weight at the end of a run (``DistillationLoss.hidden_weight_end``), reached geometrically
#: from ``hidden_weight`` over the part of the run after ``DEFAULT_HIDDEN_DECAY_START``: on SmolLM2-135M at 560 steps of
#: 2 x 64 tokens (validation split, AMD EPYC Zen 4, bf16, the other defaults) 30 -> 3 over the second half ended
#: 1.038x and 1.027x closer to the teacher than a constant 30 on two seeds (198.9 / 200.5 against 206.5 / 205.9, every
#: domain closer; docs/benchmarks-quality-zen4.md): the hidden states guide the first half, the last part the KL
DEFAULT_HIDDEN_WEIGHT_END = 3.0
DEFAULT_HIDDEN_DECAY_START = 0.5
#: ``DistillationLoss.hidden_metric`` choices, and the default: on SmolLM2-135M at 560 steps of 2 x 64 tokens
#: (validation split, AMD EPYC Zen 4, bf16, the other defaults) ``"dim-scaled"`` ended 1.039x and 1.054x closer to the
#: teacher than ``"cosine"`` on two seeds (206.5 / 205.9 against 214.5 / 217.0; docs/benchmarks-quality-zen4.md)
HIDDEN_METRICS = ("cosine", "dim-scaled")
DEFAULT_HIDDEN_METRIC = "dim-scaled"


@dataclass(frozen=True)
class DistillationLoss:
    """Weights of the loss terms.

    Args:
        kl_weight: weight of ``KL(teacher || student)`` on the next-token distributions (summed over the vocabulary).
        temperature: softmax temperature of the KL term (the term is multiplied by ``temperature ** 2``).
        hidden_weight: ``alpha``: weight of the hidden-state term, the mean over layers of
            ``|| h_s / |h_s| - h_t / |h_t| ||^2`` per token (in [0, 4]; OneBit's MSE between L2-normalised states);
            :data:`DEFAULT_HIDDEN_WEIGHT` by default.
        hidden_weight_end: the hidden-state term's weight at the end of a run: from the fraction
            ``hidden_decay_start`` of the run on, the weight moves geometrically from ``hidden_weight`` to it
            (:meth:`hidden_weight_at`; the callback passes the run's progress); None keeps ``hidden_weight`` all
            along. :data:`DEFAULT_HIDDEN_WEIGHT_END` (3) by default.
        hidden_decay_start: where in the run (0..1) the weight starts to fall; :data:`DEFAULT_HIDDEN_DECAY_START`.
        ce_weight: weight of the cross-entropy on the labels (the ordinary LM loss).
        hidden_layers: ``"all"`` (every layer output, the embedding output excluded) or ``"last"``.
        hidden_metric: ``"cosine"``: the distance of the L2-normalised states as above; ``"dim-scaled"``: the same
            distance after dividing every hidden dimension by its median ``|h_t|`` over the counted tokens of the
            batch (per layer, from the teacher, no gradient), so that the few dimensions that carry most of a
            state's norm (a pretrained model's outlier dimensions) no longer make up most of the term;
            :data:`DEFAULT_HIDDEN_METRIC` (``"dim-scaled"``) by default.
        chunked_kl: compute the KL term with :func:`kl_token_sum` (chunked, gradient formed in the forward pass);
            False uses :func:`kl_token_sum_reference`, the plain ``F.kl_div`` it is tested against (slower).
        attention_weight: weight of the attention-relation term (:mod:`hf_onebit.training.relations`: the KL between
            the teacher's and the student's Q-Q, K-K and V-V relations per position, averaged over relations, heads
            and blocks); 0 (default) leaves it out.
        attention_layers: the blocks of that term: ``"all"``, ``"last"`` or a tuple of 0-based block indices.
        attention_stride: the term uses every ``attention_stride``-th position's relation row (ending at the last
            one) and multiplies by the stride: an estimate of the full sum at about ``1 / stride`` of its cost.
    """

    kl_weight: float = 1.0
    temperature: float = 1.0
    hidden_weight: float = DEFAULT_HIDDEN_WEIGHT
    hidden_weight_end: "float | None" = DEFAULT_HIDDEN_WEIGHT_END
    hidden_decay_start: float = DEFAULT_HIDDEN_DECAY_START
    ce_weight: float = 0.0
    hidden_layers: str = "all"
    hidden_metric: str = DEFAULT_HIDDEN_METRIC
    chunked_kl: bool = True
    attention_weight: float = 0.0
    attention_layers: "str | tuple" = "all"
    attention_stride: int = 1

    def __post_init__(self):
        for name in ("kl_weight", "hidden_weight", "ce_weight", "attention_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"DistillationLoss.{name}: got {value!r}; allowed: a number >= 0")
        if not self.kl_weight + self.hidden_weight + self.ce_weight + self.attention_weight > 0:
            raise ValueError("DistillationLoss: kl_weight, hidden_weight, ce_weight and attention_weight are all 0; "
                             "allowed: one > 0")
        end = self.hidden_weight_end
        if end is not None and (isinstance(end, bool) or not isinstance(end, (int, float)) or not end > 0):
            raise ValueError(f"DistillationLoss.hidden_weight_end: got {end!r}; allowed: None or a number > 0")
        start = self.hidden_decay_start
        if isinstance(start, bool) or not isinstance(start, (int, float)) or not 0 <= start < 1:
            raise ValueError(f"DistillationLoss.hidden_decay_start: got {start!r}; allowed: a number in [0, 1)")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) or self.temperature <= 0:
            raise ValueError(f"DistillationLoss.temperature: got {self.temperature!r}; allowed: a number > 0")
        if not isinstance(self.chunked_kl, bool):
            raise ValueError(f"DistillationLoss.chunked_kl: got {self.chunked_kl!r}; allowed: True or False")
        if self.hidden_layers not in ("all", "last"):
            raise ValueError(f"DistillationLoss.hidden_layers: got {self.hidden_layers!r}; allowed: 'all' or 'last'")
        layers = self.attention_layers
        if isinstance(layers, list):
            object.__setattr__(self, "attention_layers", layers := tuple(layers))
        if not (layers in ("all", "last") or (isinstance(layers, tuple) and layers and all(
                isinstance(i, int) and not isinstance(i, bool) for i in layers))):
            raise ValueError(f"DistillationLoss.attention_layers: got {layers!r}; allowed: 'all', 'last' or a "
                             "non-empty tuple of block indices")
        stride = self.attention_stride
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise ValueError(f"DistillationLoss.attention_stride: got {stride!r}; allowed: an integer >= 1")
        if self.hidden_metric not in HIDDEN_METRICS:
            raise ValueError(f"DistillationLoss.hidden_metric: got {self.hidden_metric!r}; allowed: one of "
                             f"{HIDDEN_METRICS}")

    @property
    def needs_hidden_states(self) -> bool:
        return self.hidden_weight > 0

    @property
    def needs_relations(self) -> bool:
        return self.attention_weight > 0

    @property
    def needs_live_teacher(self) -> bool:
        """Whether a term needs more of the teacher than cached top-k targets hold (its hidden states or relations)."""
        return self.needs_hidden_states or self.needs_relations

    def token_mask(self, input_ids: torch.Tensor, attention_mask=None, labels=None) -> torch.Tensor:
        """Bool ``(batch, seq - 1)``: which positions predict a counted next token."""
        if labels is not None:
            return labels[:, 1:] != IGNORE_INDEX
        if attention_mask is not None:
            am = attention_mask.bool()
            return am[:, 1:] & am[:, :-1]
        return torch.ones(input_ids.shape[0], input_ids.shape[1] - 1, dtype=torch.bool, device=input_ids.device)

    def terms(self, student_logits, teacher_logits, mask, student_hidden=None, teacher_hidden=None, labels=None,
              teacher_topk=None, relations=None, attention_mask=None):
        """Per-term token sums ``{"kl", "hidden", "attention", "ce"}`` (only the enabled ones) over the ``mask``
        positions.

        ``teacher_topk`` (``(index, logp)``, cached targets) replaces ``teacher_logits`` for the KL term
        (:func:`sparse_kl_token_sum`). ``relations``: ``(student projections, teacher projections, head_dim)`` as
        :class:`~hf_onebit.training.relations.ProjectionCapture` records them (needed when ``attention_weight > 0``).
        """
        out = {}
        if self.kl_weight > 0:
            if teacher_topk is not None:
                kl = sparse_kl_token_sum if self.chunked_kl else sparse_kl_token_sum_reference
                out["kl"] = kl(student_logits, *teacher_topk, mask, self.temperature)
            else:
                kl = kl_token_sum if self.chunked_kl else kl_token_sum_reference
                out["kl"] = kl(student_logits, teacher_logits, mask, self.temperature)
        if self.hidden_weight > 0:
            if student_hidden is None or teacher_hidden is None:
                raise ValueError("hidden_weight > 0 needs the hidden states of student and teacher")
            layers = range(1, len(student_hidden)) if self.hidden_layers == "all" else [len(student_hidden) - 1]
            total = 0.0
            every = bool(mask.all())
            for i in layers:
                hs, ht = scored_rows(student_hidden[i], mask, every), scored_rows(teacher_hidden[i], mask, every)
                if self.hidden_metric == "dim-scaled":
                    scale = dimension_scale(ht)
                    hs, ht = hs / scale, ht / scale
                total = total + (F.normalize(hs, dim=-1) - F.normalize(ht, dim=-1)).pow(2).sum()
            out["hidden"] = total / len(layers)
        if self.attention_weight > 0:
            if relations is None:
                raise ValueError("attention_weight > 0 needs the attention projections of student and teacher")
            out["attention"] = relation_kl_token_sum(*relations, mask, attention_mask, stride=self.attention_stride)
        if self.ce_weight > 0:
            if labels is None:
                raise ValueError("ce_weight > 0 needs labels in the batch")
            out["ce"] = F.cross_entropy(scored_rows(student_logits, mask), labels[:, 1:][mask], reduction="sum")
        return out

    def hidden_weight_at(self, progress: "float | None") -> float:
        """The hidden-state term's weight at ``progress``, the fraction of the run done (clamped to 0..1): constant
        ``hidden_weight`` up to ``hidden_decay_start``, then geometric to ``hidden_weight_end`` at 1. ``progress``
        None (outside a run), ``hidden_weight_end`` None or ``hidden_weight`` 0: ``hidden_weight``."""
        if progress is None or self.hidden_weight_end is None or self.hidden_weight == 0:
            return float(self.hidden_weight)
        start = self.hidden_decay_start
        frac = (min(max(float(progress), 0.0), 1.0) - start) / (1.0 - start)
        if frac <= 0:
            return float(self.hidden_weight)
        return float(self.hidden_weight * (self.hidden_weight_end / self.hidden_weight) ** frac)

    def combine(self, terms: dict, progress: "float | None" = None) -> torch.Tensor:
        """The weighted sum of ``terms``; ``progress`` (the fraction of the run done) sets the hidden-state term's
        weight (:meth:`hidden_weight_at`)."""
        weights = {"kl": self.kl_weight, "hidden": self.hidden_weight_at(progress), "ce": self.ce_weight,
                   "attention": self.attention_weight}
        return sum(weights[name] * value for name, value in terms.items())


def dimension_scale(teacher_states: torch.Tensor) -> torch.Tensor:
    """Per hidden dimension, the median ``|h|`` over the rows of ``teacher_states`` (``(tokens, hidden)``), never 0
    and without gradient: a scale the few tokens with massive activations (a model's attention sinks) cannot move."""
    h = teacher_states.detach().abs()
    if h.shape[0] == 0:
        return torch.ones(h.shape[-1], dtype=h.dtype, device=h.device)
    return h.median(dim=0).values.clamp_min(1e-6)


def kl_token_sum_reference(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
                           temperature: float = 1.0) -> torch.Tensor:
    """The specification of :func:`kl_token_sum`: ``F.kl_div`` on the masked rows in float32."""
    tau = temperature
    log_p_s = F.log_softmax(student_logits[:, :-1][mask].float() / tau, dim=-1)
    log_p_t = F.log_softmax(teacher_logits[:, :-1][mask].float() / tau, dim=-1)
    return F.kl_div(log_p_s, log_p_t, log_target=True, reduction="sum") * (tau * tau)


def scored_rows(states: torch.Tensor, mask: torch.Tensor, every: bool | None = None) -> torch.Tensor:
    """The float32 rows of ``states`` (``(batch, seq, dim)``) at the positions ``mask`` (``(batch, seq - 1)``)
    scores, ``(positions, dim)``. ``every`` (``mask.all()``, when the caller has it) takes them by slicing off the
    last position instead of by a boolean gather: the gather's backward scatters into a zeroed tensor, and
    for the 30 hidden-state terms of a SmolLM2 step of 4 x 256 tokens the two together took ~55 ms."""
    if every is None:
        every = bool(mask.all())
    kept = states[:, :-1]
    return (kept.reshape(-1, kept.shape[-1]) if every else kept[mask]).float()


#: Rows of the vocabulary-sized float32 temporaries the KL works on at a time. A chunk goes through a dozen passes;
#: 8 rows of a 49,152-token vocabulary are 1.5 MB, shared by the threads and held in their L2 caches, 32 rows are
#: 6 MB (SmolLM2's KL over 4 x 256 tokens, forward and backward: 96 ms at 8 rows, 122 ms at 32; AMD EPYC Zen 5, 2
#: threads, 1 MB L2 a core).
KL_CHUNK_ROWS = 8


def kl_token_sum(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
                 temperature: float = 1.0) -> torch.Tensor:
    """``tau^2 * sum_p KL(softmax(t_p / tau) || softmax(s_p / tau))`` over the positions ``p`` where ``mask`` is True.

    ``student_logits`` / ``teacher_logits`` are ``(batch, seq, vocab)``; position ``p < seq - 1`` of ``mask``
    ``(batch, seq - 1)`` says whether the logits at ``p`` count. The same value as
    ``F.kl_div(log_softmax(s / tau), log_softmax(t / tau), log_target=True, reduction="sum") * tau^2`` on the masked
    rows, computed :data:`KL_CHUNK_ROWS` rows at a time in float32 with the gradient formed in the same pass
    (``tau * (softmax(s / tau) - softmax(t / tau))``, stored in the logits' dtype), so that no ``(tokens, vocab)``
    float32 temporary is ever allocated: on a CPU those allocations (each a fresh mapping of hundreds of MB) cost more
    than the arithmetic.
    """
    batch, seq = student_logits.shape[:2]
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(f"teacher logits {tuple(teacher_logits.shape)} and student logits "
                         f"{tuple(student_logits.shape)} differ in shape (same tokenizer / vocabulary needed)")
    idx = predicted_rows(mask, batch, seq, student_logits.device)
    return _ChunkedKL.apply(student_logits, teacher_logits.detach(), idx, float(temperature))


def predicted_rows(mask: torch.Tensor, batch: int, seq: int, device) -> torch.Tensor:
    """Flat indices into ``(batch * seq)`` logit rows of the positions ``mask`` (``(batch, seq - 1)``) scores."""
    rows = torch.zeros(batch, seq, dtype=torch.bool, device=mask.device)
    rows[:, :-1] = mask
    return rows.reshape(-1).nonzero().squeeze(1).to(device)


class _ChunkedKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s, t, idx, tau):
        s2, t2 = s.reshape(-1, s.shape[-1]), t.reshape(-1, t.shape[-1])
        need_grad = ctx.needs_input_grad[0]
        grad = torch.zeros_like(s2) if need_grad else None
        total = torch.zeros((), dtype=torch.float32, device=s.device)
        for start in range(0, idx.numel(), KL_CHUNK_ROWS):
            rows = idx[start:start + KL_CHUNK_ROWS]
            si = s2.index_select(0, rows).float()
            ti = t2.index_select(0, rows).float()
            if tau != 1.0:
                si.div_(tau)
                ti.div_(tau)
            log_ps = torch.log_softmax(si, dim=-1)
            log_pt = torch.log_softmax(ti, dim=-1)
            p_t = log_pt.exp()
            total += torch.dot(p_t.view(-1), log_pt.sub_(log_ps).view(-1))
            if need_grad:
                grad.index_copy_(0, rows, log_ps.exp_().sub_(p_t).mul_(tau).to(grad.dtype))
        ctx.save_for_backward(grad)
        ctx.shape = s.shape
        return total * (tau * tau)

    @staticmethod
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        return (grad * grad_out.to(grad.dtype)).view(ctx.shape), None, None, None


# ------------------------------------------------------------------------------------------------ cached targets
def sparse_kl_token_sum_reference(student_logits: torch.Tensor, topk_index: torch.Tensor, topk_logp: torch.Tensor,
                                  mask: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The specification of :func:`sparse_kl_token_sum` (plain autograd, float32).

    The teacher is known only by its ``k`` most likely next tokens per position (``topk_index``, ``topk_logp``:
    ``(batch, seq, k)`` ids and log-probabilities at ``temperature``) plus the rest of its mass, ``r = 1 - sum p``.
    The KL is that of the two distributions over ``k + 1`` outcomes (the ``k`` tokens, and "any other token"):

        sum_{i in top-k} p_i (log p_i - log q_i) + r (log r - log q_rest)

    It is never larger than the full KL (merging outcomes cannot increase it) and equals it when the student spreads
    the rest of its mass over the other tokens as the teacher does; how the student shares that mass out is not
    constrained (the bias of keeping only the top ``k``).
    """
    tau = temperature
    log_q = F.log_softmax(student_logits[:, :-1][mask].float() / tau, dim=-1)
    idx = topk_index[:, :-1][mask].long()
    log_p = topk_logp[:, :-1][mask].float()
    p = log_p.exp()
    log_q_top = log_q.gather(-1, idx)
    rest_p = (1 - p.sum(-1)).clamp_min(0)
    rest_q = (1 - log_q_top.exp().sum(-1)).clamp_min(1e-30)
    top = (p * (log_p - log_q_top)).sum()
    rest = (torch.xlogy(rest_p, rest_p) - rest_p * rest_q.log()).sum()
    return (top + rest) * (tau * tau)


def sparse_kl_token_sum(student_logits: torch.Tensor, topk_index: torch.Tensor, topk_logp: torch.Tensor,
                        mask: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """:func:`sparse_kl_token_sum_reference` computed :data:`KL_CHUNK_ROWS` rows at a time with its gradient formed
    in the same pass: ``tau * (q_j - p_j)`` for the top-``k`` tokens and ``tau * q_j (1 - r / q_rest)`` for the
    others (``q`` the student's softmax at ``tau``, ``r`` and ``q_rest`` the mass outside the top ``k``)."""
    batch, seq = student_logits.shape[:2]
    if topk_index.shape[:2] != (batch, seq) or topk_logp.shape != topk_index.shape:
        raise ValueError(f"cached teacher targets {tuple(topk_index.shape)} / {tuple(topk_logp.shape)} do not match "
                         f"the student's logits {tuple(student_logits.shape)}")
    idx = predicted_rows(mask, batch, seq, student_logits.device)
    k = topk_index.shape[-1]
    return _ChunkedSparseKL.apply(student_logits, topk_index.reshape(-1, k), topk_logp.reshape(-1, k), idx,
                                  float(temperature))


class _ChunkedSparseKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s, top_idx, top_logp, idx, tau):
        s2 = s.reshape(-1, s.shape[-1])
        need_grad = ctx.needs_input_grad[0]
        grad = torch.zeros_like(s2) if need_grad else None
        total = torch.zeros((), dtype=torch.float64, device=s.device)
        for start in range(0, idx.numel(), KL_CHUNK_ROWS):
            rows = idx[start:start + KL_CHUNK_ROWS]
            si = s2.index_select(0, rows).float()
            if tau != 1.0:
                si.div_(tau)
            ti = top_idx.index_select(0, rows).long()
            log_p = top_logp.index_select(0, rows).float()
            log_q = torch.log_softmax(si, dim=-1)
            p = log_p.exp()
            log_q_top = log_q.gather(-1, ti)
            rest_p = (1 - p.sum(-1)).clamp_min(0)
            rest_q = (1 - log_q_top.exp().sum(-1)).clamp_min(1e-30)
            total += ((p * (log_p - log_q_top)).sum() + (torch.xlogy(rest_p, rest_p) - rest_p * rest_q.log()).sum()
                      ).double()
            if need_grad:
                q = log_q.exp_()
                g = q * (1 - rest_p / rest_q)[:, None]  # the tokens outside the top k
                g.scatter_(-1, ti, q.gather(-1, ti) - p)  # the top k
                grad.index_copy_(0, rows, g.mul_(tau).to(grad.dtype))
        ctx.save_for_backward(grad)
        ctx.shape = s.shape
        return (total * (tau * tau)).float()

    @staticmethod
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        return (grad * grad_out.to(grad.dtype)).view(ctx.shape), None, None, None, None
