"""Attention-relation distillation (MiniLMv2's self-attention relations, which BitDistill applies to 1.58-bit
students): the query, key and value projections of chosen blocks of the student learn to relate the tokens of a
sequence as the teacher's do.

For one projection output ``A`` (``(batch, seq, heads * head_dim)``), split into its heads, the relation of head ``h``
is the row-wise softmax of ``A_h A_h^T / sqrt(head_dim)`` over the positions a position may attend to (itself and
the earlier ones, as in a causal LM; padding excluded). The term is ``KL(teacher relation || student relation)`` of
each row, averaged over the three relations (Q-Q, K-K, V-V), the heads and the chosen blocks, and summed over the
counted positions like every term of :class:`~hf_onebit.training.losses.DistillationLoss`.

:class:`ProjectionCapture` records the projections' outputs with forward hooks on ``self_attn.q_proj``, ``k_proj``
and ``v_proj`` of LLaMA-style blocks, only between :meth:`ProjectionCapture.start` and
:meth:`~ProjectionCapture.stop` (or inside :meth:`~ProjectionCapture.recording`).
"""

from __future__ import annotations

import contextlib

import torch

from ..integration.model_shape import attention_head_dim

PROJECTIONS = ("q_proj", "k_proj", "v_proj")
#: What a masked (future or padded) position's score is set to before the softmax: its probability is exactly 0,
#: and unlike ``-inf`` it leaves no ``nan`` in the KL of those positions.
MASKED_SCORE = -1e9


def attention_layer_indices(layers: "str | tuple", n_layers: int) -> list[int]:
    """The 0-based blocks ``DistillationLoss.attention_layers`` names: ``"all"``, ``"last"`` or a tuple of indices
    (negative ones count from the end)."""
    if layers == "all":
        return list(range(n_layers))
    if layers == "last":
        return [n_layers - 1]
    out = []
    for i in layers:
        if not -n_layers <= i < n_layers:
            raise ValueError(f"DistillationLoss.attention_layers: block {i} does not exist; allowed: -{n_layers} to "
                             f"{n_layers - 1} (the model has {n_layers} blocks)")
        out.append(i % n_layers)
    return sorted(set(out))


def parse_attention_layers(text: str) -> "str | tuple[int, ...]":
    """``"all"``, ``"last"`` or comma-separated block indices (``"0,15,-1"``), as ``attention_layers`` takes them."""
    value = str(text).strip()
    if value in ("all", "last"):
        return value
    try:
        return tuple(int(part) for part in value.split(","))
    except ValueError:
        raise ValueError(f"--attention-layers: got {text!r}; allowed: all, last or comma-separated block indices "
                         "such as 0,15,-1") from None


class ProjectionCapture:
    """Forward hooks on the Q / K / V projections of ``layers`` (``attention_layer_indices``) of ``model``."""

    def __init__(self, model, layers: "str | tuple"):
        from .blockwise import decoder_layers

        blocks = decoder_layers(model)
        self.head_dim = attention_head_dim(model.config)
        self._on = False
        self._outputs: list[torch.Tensor] = []
        projections = []
        for i in attention_layer_indices(layers, len(blocks)):
            attn = getattr(blocks[i], "self_attn", None)
            for name in PROJECTIONS:
                proj = getattr(attn, name, None)
                if not isinstance(proj, torch.nn.Module):
                    raise ValueError(f"{type(model).__name__}: block {i} has no self_attn.{name}; attention-relation "
                                     "distillation supports LLaMA-style blocks (separate q_proj, k_proj, v_proj)")
                projections.append(proj)
        self._handles = [proj.register_forward_hook(self._hook) for proj in projections]  # all found: none leaks

    def _hook(self, module, args, output):
        if self._on:
            self._outputs.append(output)

    def start(self) -> None:
        """Record the projections' outputs from now on (earlier records are dropped)."""
        self._outputs = []
        self._on = True

    def stop(self) -> None:
        self._on = False

    @contextlib.contextmanager
    def recording(self):
        """Record the projections' outputs of the forward passes inside (:meth:`start`, then :meth:`stop`)."""
        self.start()
        try:
            yield self
        finally:
            self.stop()

    def take(self) -> list[torch.Tensor]:
        """The recorded outputs, in forward order (per block: Q, K, V), and forget them."""
        out, self._outputs = self._outputs, []
        return out

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._outputs = []


def query_rows(n: int, stride: int, device=None) -> torch.Tensor:
    """The positions of a ``n``-token sequence whose relation rows the term uses: every ``stride``-th one, ending at
    the last position that predicts a token (``n - 2``), so that every context length is sampled evenly."""
    return torch.arange(n - 2, -1, -stride, device=device).flip(0)


def relation_kl_token_sum(student: list, teacher: list, head_dim: int, mask: torch.Tensor,
                          attention_mask: torch.Tensor | None = None, stride: int = 1) -> torch.Tensor:
    """``sum_p mean_{relation, head} KL(teacher row p || student row p)`` over the positions ``p`` where ``mask``
    (``(batch, seq - 1)``) is True. ``student`` / ``teacher``: the projection outputs of :meth:`ProjectionCapture.take`
    (same order and shapes). ``stride > 1`` estimates the sum from every ``stride``-th row (:func:`query_rows`), times
    ``stride``: the score matrices shrink by that factor."""
    if len(student) != len(teacher) or not student:
        raise ValueError(f"attention relations: {len(student)} student and {len(teacher)} teacher projections "
                         "recorded; allowed: the same number, at least one")
    device, n = student[0].device, student[0].shape[1]
    # what every projection shares, built once: the rows, their weights, the masked keys as an additive score
    rows = query_rows(n, stride, device)
    allowed = _allowed(n, attention_mask, device)[..., rows, :]
    bias = torch.zeros(allowed.shape, dtype=torch.float32, device=device).masked_fill_(~allowed, MASKED_SCORE)
    counted = mask[:, rows].to(torch.float32).mul_(stride)[:, None, :, None]  # (batch, 1, rows, 1)
    total = torch.zeros((), dtype=torch.float32, device=device)
    heads = 0
    for s, t in zip(student, teacher):
        if s.shape != t.shape or s.shape[-1] % head_dim or s.shape[1] != n:
            raise ValueError(f"attention relations: student {tuple(s.shape)} / teacher {tuple(t.shape)} projections; "
                             f"allowed: equal shapes of {n} positions whose width is a multiple of "
                             f"head_dim={head_dim}")
        total = total + _RelationKL.apply(s, t.detach(), head_dim, rows, bias, counted)
        heads += s.shape[-1] // head_dim
    return total / heads


def relation_log_probs(a: torch.Tensor, head_dim: int, allowed: torch.Tensor) -> torch.Tensor:
    """``(batch, heads, seq, seq)`` log-softmax of ``A_h A_h^T / sqrt(head_dim)`` over the ``allowed`` keys."""
    b, n, width = a.shape
    a = a.float().view(b, n, width // head_dim, head_dim).transpose(1, 2)
    scores = torch.matmul(a, a.transpose(-1, -2)) * head_dim ** -0.5
    return scores.masked_fill(~allowed, MASKED_SCORE).log_softmax(dim=-1)


def relation_kl_reference(s, t, head_dim, mask, attention_mask=None, stride: int = 1) -> torch.Tensor:
    """The specification of one projection's term in :func:`relation_kl_token_sum` (plain autograd, float32):
    the KL summed over heads and the counted rows of :func:`query_rows`, times ``stride``."""
    allowed = _allowed(s.shape[1], attention_mask, s.device)
    log_s = relation_log_probs(s, head_dim, allowed)
    log_t = relation_log_probs(t, head_dim, allowed)
    kl = (log_t.exp() * (log_t - log_s)).masked_fill(~allowed, 0.0).sum(dim=-1)  # (batch, heads, seq)
    rows = query_rows(s.shape[1], stride, s.device)
    return (kl[..., rows] * mask[:, None, rows]).sum() * stride


def _allowed(n: int, attention_mask, device) -> torch.Tensor:
    allowed = torch.ones(n, n, dtype=torch.bool, device=device).tril()
    if attention_mask is not None:
        allowed = allowed & attention_mask.bool()[:, None, None, :]
    return allowed


class _RelationKL(torch.autograd.Function):
    """:func:`relation_kl_reference` with its gradient formed in the forward pass, in place where it can be, in
    float32: the gradient of a row's KL with respect to the student's scores is ``G = softmax(scores) - p_teacher``,
    and the scores ``A_R A^T / sqrt(head_dim)`` of the rows ``R`` pass it to ``A`` as ``G^T A_R`` plus ``G A`` on the
    rows ``R`` (divided by ``sqrt(head_dim)``); no autograd graph of the ``(batch, heads, rows, seq)`` temporaries is
    kept."""

    @staticmethod
    def forward(ctx, s, t, head_dim, rows, bias, counted):
        with torch.autocast(s.device.type, enabled=False):  # float32 inside an autocast region too
            return _RelationKL._forward(ctx, s, t, head_dim, rows, bias, counted)

    @staticmethod
    def _forward(ctx, s, t, head_dim, rows, bias, counted):
        b, n, width = s.shape
        heads, scale, r = width // head_dim, head_dim ** -0.5, rows.numel()
        bias = bias.expand(b, heads, r, n).reshape(b * heads, r, n)  # a view unless padding makes it per sequence
        a_s = s.detach().float().view(b, n, heads, head_dim).transpose(1, 2).reshape(b * heads, n, head_dim)
        a_t = t.float().view(b, n, heads, head_dim).transpose(1, 2).reshape(b * heads, n, head_dim)
        a_s_rows = a_s[:, rows]
        # (the masked scores added in the product; softmax and log_softmax, not exp: on a CPU torch's exp is
        # several times slower, most of all on the masked scores)
        scores_s = torch.baddbmm(bias, a_s_rows, a_s.transpose(1, 2), alpha=scale).view(b, heads, r, n)
        scores_t = torch.baddbmm(bias, a_t[:, rows], a_t.transpose(1, 2), alpha=scale).view(b, heads, r, n)
        p_t = scores_t.softmax(dim=-1).mul_(counted)  # 0 on masked keys (their score underflows) and uncounted rows
        log_t = scores_t.log_softmax(dim=-1)
        total = torch.dot(p_t.view(-1), log_t.sub_(scores_s.log_softmax(dim=-1)).view(-1))
        if ctx.needs_input_grad[0]:
            grad = scores_s.softmax(dim=-1).mul_(counted).sub_(p_t).view(b * heads, r, n)  # d total / d scores
            ctx.save_for_backward(grad, a_s, a_s_rows, rows)
            ctx.meta = (s.shape, s.dtype, scale)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad, a_s, a_s_rows, rows = ctx.saved_tensors
        shape, dtype, scale = ctx.meta
        b, n, width = shape
        g = torch.bmm(grad.transpose(1, 2), a_s_rows)  # through the keys: (b * heads, n, head_dim)
        g.index_add_(1, rows, torch.bmm(grad, a_s))  # through the query rows
        g.mul_(scale * grad_out)
        return (g.view(b, -1, n, a_s.shape[-1]).transpose(1, 2).reshape(shape).to(dtype),
                None, None, None, None, None)
