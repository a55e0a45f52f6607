"""InfoNCE over SWING positives with in-batch and extra negatives (pure tensor math).

Shape legend: B = batch size (anchors), M = extra negatives, N = B + M candidates,
D = projection dim.

Row i scores anchor i against every candidate: the B in-batch positives (column i is
its own target) followed by the M extra negatives shared by the batch. Two equal
computations are offered: one piece (`chunk_size=0`) builds the masked [B, N] logits
at once and hands them to `F.cross_entropy` (the plain formulation, and the autograd
reference); chunked (`chunk_size > 0`) is a custom autograd function that walks B in
row blocks, finds the false negatives by binary search instead of a dense [B, N]
mask, and computes each block's gradient contribution right after its softmax, so no
[B, N] buffer exists and every logit is exponentiated once (`benchmarks/infonce_bench.py`
measures both).

With N ranks (`info_nce_terms_across_ranks`) the in-batch candidates are the GLOBAL batch's
positives, all-gathered with gradients flowing back to each rank's own rows, so the
loss and its gradients do not depend on the rank count. `send_positives` starts that
gather early, so it travels while the model's forward runs (`PositivesInFlight`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch.nn import functional as F

_NEG = -1e9  # a finite "minus infinity": masked logits stay NaN-free under autograd


@dataclass(frozen=True, kw_only=True)
class InfoNCEOptions:
    """The arguments of one InfoNCE term (item-item or user-user) fixed per run.

    Args:
        tau: temperature.
        log_q: subtract the log sampling probability of each candidate (logQ correction).
        uniform_p: probability of one catalogue entity under the uniform extra-negative
            sampler (1 / catalogue size; 0 without extra negatives).
        chunk_size: rows per block of the chunked computation (0 = one piece).
    """

    tau: float
    log_q: bool = False
    uniform_p: float = 0.0
    chunk_size: int = 0


def info_nce(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    anchor_ids: torch.Tensor,
    positive_ids: torch.Tensor,
    tau: float,
    negatives: torch.Tensor | None = None,
    negative_ids: torch.Tensor | None = None,
    candidate_q: torch.Tensor | None = None,
    uniform_p: float = 0.0,
    chunk_size: int = 0,
    anchor_sets: tuple[torch.Tensor, torch.Tensor] | None = None,
    *,
    candidate_ids: torch.Tensor | None = None,
    target_offset: int = 0,
    denominator: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean InfoNCE over anchors that have a positive.

    Anchors without a SWING neighbour (`positive_ids == -1`) are masked out of the
    mean and their (absent) positives are never used as negatives. A candidate is
    not a negative for anchor i (false-negative masking) when it is the same entity
    as anchor i or as anchor i's positive; this holds for in-batch candidates and
    extra negatives alike. With `anchor_sets`, a candidate anywhere in anchor i's
    positive set (its SWING top-K list) is not a negative either. Extra negatives
    with id -1 are ignored.

    With `candidate_q` (logQ correction, Yi et al. 2019) every logit, the target's
    included, has the log of its candidate's sampling probability subtracted (the
    mixed in-batch + uniform proposal of `mixed_log_q`), so frequently sampled
    (popular) candidates are not over-penalised as negatives.

    Args:
        anchor: [B, D] projections of the anchors.
        positive: [B, D] projections of each anchor's sampled positive.
        anchor_ids: [B] entity ids of the anchors.
        positive_ids: [B] entity ids of the positives, -1 where there is none.
        tau: temperature.
        negatives: [M, D] projections of extra negatives (mixed negative sampling).
        negative_ids: [M] their entity ids (-1 = unused).
        candidate_q: [N] probability that one draw of the positive sampler gives each
            candidate (None = no logQ correction).
        uniform_p: probability of each catalogue entity under the uniform extra-negative
            sampler (1 / catalogue size).
        chunk_size: rows per block of the chunked computation; 0 = one piece.
        anchor_sets: (lengths [B], ids [S]): each anchor's positive set as CSR rows.
        candidate_ids: [P] ids of the in-batch candidates when `positive` [P, D] holds more
            rows than the anchors (every rank's positives, `info_nce_terms_across_ranks`);
            default `positive_ids`.
        target_offset: the candidate column of anchor 0's positive (anchor i's is i + offset).
        denominator: what the loss sum is divided by (default: the anchors with a positive).

    Returns:
        A scalar; 0 (with a graph) when no anchor has a positive.
    """
    a = F.normalize(anchor, dim=-1)
    cand = F.normalize(positive, dim=-1)
    cand_ids = positive_ids if candidate_ids is None else candidate_ids
    n_batch = cand.shape[0]
    if negatives is not None and negatives.shape[0] > 0:
        assert negative_ids is not None
        cand = torch.cat([cand, F.normalize(negatives, dim=-1)])
        cand_ids = torch.cat([cand_ids, negative_ids])
    valid = positive_ids >= 0
    if denominator is None:
        denominator = valid.sum().clamp_min(1)
    w = valid.to(a.dtype) / denominator.to(a.dtype)
    b = a.shape[0]
    # per-candidate additive term: -log q (logQ) and "minus infinity" for absent candidates
    bias = a.new_zeros(cand.shape[0])
    if candidate_q is not None:
        bias = -mixed_log_q(candidate_q, n_batch, cand.shape[0] - n_batch, uniform_p).to(a.dtype)
    bias = bias.masked_fill(cand_ids < 0, _NEG)
    a = a / tau
    if 0 < chunk_size < b:
        return _ChunkedInfoNCE.apply(
            a, cand, anchor_ids, positive_ids, cand_ids, bias, w, chunk_size, anchor_sets, target_offset
        )
    logits = candidate_logits(a, cand, anchor_ids, positive_ids, cand_ids, bias, target_offset)
    if anchor_sets is not None:
        rows, cols = set_pairs(anchor_sets[0], anchor_sets[1], cand_ids, target_offset)
        logits = logits.index_put((rows, cols), logits.new_tensor(_NEG))
    targets = torch.arange(b, device=a.device) + target_offset
    per_row = F.cross_entropy(logits, targets, reduction="none")
    return (per_row * w).sum()


def candidate_logits(
    a: torch.Tensor,
    cand: torch.Tensor,
    anchor_ids: torch.Tensor,
    positive_ids: torch.Tensor,
    cand_ids: torch.Tensor,
    bias: torch.Tensor,
    start: int,
) -> torch.Tensor:
    """Masked logits of anchor rows [start, start + k) against all N candidates.

    Args:
        a: [k, D] normalised anchors divided by tau (rows start.. of the batch).
        cand: [N, D] normalised candidates.
        anchor_ids, positive_ids: [k] ids of those rows.
        cand_ids: [N] candidate ids.
        bias: [N] added to every row (-log q; -1e9 for absent candidates).
        start: the target column of the first row (row r's is start + r).

    Returns:
        [k, N]; false negatives are -1e9, the target column never is.
    """
    logits = torch.addmm(bias.unsqueeze(0), a, cand.t())
    c = cand_ids.unsqueeze(0)
    false_neg = (c == anchor_ids.unsqueeze(1)) | (c == positive_ids.unsqueeze(1))
    false_neg.diagonal(offset=start).fill_(False)
    return logits.masked_fill(false_neg, _NEG)


def false_negative_pairs(
    anchor_ids: torch.Tensor,
    positive_ids: torch.Tensor,
    cand_ids: torch.Tensor,
    anchor_sets: tuple[torch.Tensor, torch.Tensor] | None = None,
    target_offset: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) of every false negative, sorted by row: the sparse form of the mask.

    Row i's false negatives are the candidates whose id equals anchor i's id or its
    positive's id (-1 keys match nothing), or with `anchor_sets` (lengths [B], ids)
    any id of anchor i's positive set, the target column i + `target_offset` excepted. Found by
    binary search in the sorted candidate ids, so the cost is O(N log N + pairs), not
    O(B x N); with popularity-skewed ids the pairs are a few percent of B x N.

    Returns:
        rows [P], cols [P] (int64).
    """
    sorted_ids, order = torch.sort(cand_ids)
    everyone = torch.arange(anchor_ids.shape[0], device=cand_ids.device)
    groups = [(everyone, anchor_ids), (everyone, positive_ids)]
    if anchor_sets is not None:
        groups.append((torch.repeat_interleave(everyone, anchor_sets[0]), anchor_sets[1]))
    rows, cols = [], []
    for key_rows, keys in groups:
        lo = torch.searchsorted(sorted_ids, keys, side="left")
        n = torch.searchsorted(sorted_ids, keys, side="right") - lo
        n = n.masked_fill(keys < 0, 0)
        rows.append(torch.repeat_interleave(key_rows, n))
        # position of each match: its run's start in the sorted ids + its index within the run
        within = torch.arange(int(n.sum()), device=n.device) - torch.repeat_interleave(n.cumsum(0) - n, n)
        cols.append(order[torch.repeat_interleave(lo, n) + within])
    r, c = torch.cat(rows), torch.cat(cols)
    keep = c != r + target_offset
    r, c = r[keep], c[keep]
    r, idx = torch.sort(r, stable=True)
    return r, c[idx]


def set_pairs(
    lengths: torch.Tensor, ids: torch.Tensor, cand_ids: torch.Tensor, target_offset: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) where a candidate is in row i's positive set, the target column excepted."""
    b = lengths.shape[0]
    none = torch.full((b,), -1, dtype=cand_ids.dtype, device=cand_ids.device)
    return false_negative_pairs(none, none, cand_ids, (lengths, ids), target_offset)


class _ChunkedInfoNCE(torch.autograd.Function):
    """sum_i w_i (logsumexp_j L_ij - L_ii), walked in row blocks, gradients fused in.

    The loss is a scalar, so its gradient is the upstream scalar times a fixed
    tensor: each block's softmax, once computed for the log-sum-exp, immediately
    yields that block's contribution to dL/da and dL/dcand, and backward only scales
    them. A block's logits are one GEMM with the bias riding on it, the false
    negatives are written in sparsely (`false_negative_pairs`) and everything after
    is in place, so the block is touched a few times while in cache and every logit
    is exponentiated once. Nothing of size B x N outlives its block.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        a: torch.Tensor,
        cand: torch.Tensor,
        anchor_ids: torch.Tensor,
        positive_ids: torch.Tensor,
        cand_ids: torch.Tensor,
        bias: torch.Tensor,
        w: torch.Tensor,
        chunk: int,
        anchor_sets: tuple[torch.Tensor, torch.Tensor] | None,
        offset: int,
    ) -> torch.Tensor:
        b, n = a.shape[0], cand.shape[0]
        want_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]  # type: ignore[attr-defined]
        rows, cols = false_negative_pairs(anchor_ids, positive_ids, cand_ids, anchor_sets, offset)
        starts = list(range(0, b, chunk))
        bounds = torch.searchsorted(rows, torch.tensor([*starts, b], device=rows.device)).tolist()
        total = a.new_zeros(())
        ga = torch.empty_like(a) if want_grad else None
        gc = torch.zeros_like(cand) if want_grad else None
        for k, s in enumerate(starts):
            e = min(s + chunk, b)
            logits = torch.addmm(bias.unsqueeze(0), a[s:e], cand.t())
            lo, hi = bounds[k], bounds[k + 1]
            if hi > lo:
                logits.view(-1).index_fill_(0, (rows[lo:hi] - s) * n + cols[lo:hi], _NEG)
            target = logits.diagonal(offset=s + offset).clone()
            m = logits.amax(dim=1, keepdim=True)
            p = torch.exp_(logits.sub_(m))  # unnormalised softmax, in place
            z = p.sum(dim=1)
            wb = w[s:e]
            total += ((z.log() + m.squeeze(1) - target) * wb).sum()
            if ga is not None and gc is not None:
                # d loss / d L_ij = w_i (softmax_ij - [j == i])
                p.mul_((wb / z).unsqueeze(1))
                p.diagonal(offset=s + offset).sub_(wb)
                torch.mm(p, cand, out=ga[s:e])
                gc.addmm_(p.t(), a[s:e])
        if ga is not None and gc is not None:
            ctx.save_for_backward(ga, gc)
        return total

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        ga, gc = ctx.saved_tensors  # type: ignore[attr-defined]
        return ga * grad, gc * grad, None, None, None, None, None, None, None, None


def mixed_log_q(cand_q: torch.Tensor, n_batch: int, n_extra: int, uniform_p: float) -> torch.Tensor:
    """Log sampling probability of each candidate under the mixed proposal.

    In-batch candidates are `n_batch` draws from the positive sampler (marginal
    probability `cand_q`), extra negatives `n_extra` uniform draws (`uniform_p` each),
    so a candidate's expected share of the N slots is
    (n_batch * q + n_extra * uniform_p) / N. The same formula holds for a candidate
    whichever stream drew it, so duplicates across streams are consistent.

    Args:
        cand_q: [N] marginal probability of each candidate under the positive sampler.
        n_batch: B.
        n_extra: M.
        uniform_p: 1 / catalogue size (0 without extra negatives).

    Returns:
        [N] log probabilities (floored at 1e-12 to stay finite).
    """
    n = n_batch + n_extra
    r = (n_batch * cand_q.double() + n_extra * uniform_p) / max(n, 1)
    return torch.log(r.clamp_min(1e-12)).to(cand_q.dtype)


class PositivesInFlight:
    """One step's exchange of the InfoNCE positives between ranks, open across the forward.

    The exchange is split in two autograd nodes so that neither collective is waited on
    where it starts: `_SendRows` launches the all-gather before the model's forward and
    `_ReceiveRows` waits for it after, so the gather travels while the rank computes
    (rather than the rank idling at a barrier until the slowest one arrives). In
    backward `_ReceiveRows` launches the all-reduce of the gradient and `_SendRows`, whose
    backward autograd runs only after every node created after it (the model's whole
    backward), waits for it. gloo and nccl both run async all_gather and all_reduce, and
    every rank issues them in the same order.
    """

    def __init__(self, terms: list[InfoNCETerm]) -> None:
        b = terms[0].positive.shape[0]
        self.widths = [t.positive.shape[1] for t in terms]
        extras = [x for t in terms for x in (t.positive_ids, *_local_q(t.candidate_q, b))]
        self.likes = [(x.dtype, x.shape[1:]) for x in extras]
        self.gather: tuple[dist.Work, list[torch.Tensor], torch.Tensor] | None = None
        self.reduce: tuple[dist.Work, torch.Tensor] | None = None
        self.through: torch.Tensor = _SendRows.apply(torch.cat([t.positive for t in terms], dim=1), self, *extras)

    def receive(self) -> tuple[torch.Tensor, ...]:
        """([world * B, sum of widths] positives, then every extra of every term), in rank order."""
        return _ReceiveRows.apply(self.through, self)  # type: ignore[no-any-return]


class _SendRows(torch.autograd.Function):
    """Forward: launch the all-gather of this rank's rows of `x` and of each extra (one byte
    matrix [n, row bytes], so values travel exactly and one collective serves them all),
    and pass `x` through. Backward: wait for the all-reduce `_ReceiveRows` launched and
    return this rank's rows of the summed gradient (each rank's loss uses every rank's
    rows, so this rank's gradient is the sum over ranks); what arrives here is a
    placeholder."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, flight: PositivesInFlight, *extras: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        world, rank, n = dist.get_world_size(), dist.get_rank(), x.shape[0]
        rows = [t.detach().contiguous().reshape(n, math.prod(t.shape[1:])).view(torch.uint8) for t in (x, *extras)]
        packed = torch.cat(rows, dim=1)
        parts = [torch.empty_like(packed) for _ in range(world)]
        # the flight holds `packed` too: nothing may reuse its memory while the gather reads it
        flight.gather = (dist.all_gather(parts, packed, async_op=True), parts, packed)
        ctx.flight, ctx.rows, ctx.extras = flight, (rank * n, (rank + 1) * n), len(extras)  # type: ignore[attr-defined]
        return x.view_as(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, placeholder: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        work, summed = ctx.flight.reduce  # type: ignore[attr-defined]
        work.wait()
        lo, hi = ctx.rows  # type: ignore[attr-defined]
        return (summed[lo:hi], None, *([None] * ctx.extras))  # type: ignore[attr-defined]


class _ReceiveRows(torch.autograd.Function):
    """Forward: wait for `_SendRows`' all-gather and unpack every rank's rows of `x` and
    of each extra (differentiable in `x` only). Backward: launch the all-reduce of the
    gradient for `_SendRows.backward` to wait for; pass a zero placeholder on."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, flight: PositivesInFlight) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        work, parts, _ = flight.gather  # type: ignore[misc]
        work.wait()
        flight.gather = None
        world = len(parts)
        likes = [(x.dtype, x.shape[1:]), *flight.likes]
        widths = [dtype.itemsize * math.prod(shape) for dtype, shape in likes]
        gathered = torch.cat(parts).split(widths, dim=1)
        out = tuple(g.contiguous().view(dtype).reshape(-1, *shape) for g, (dtype, shape) in zip(gathered, likes))
        assert out[0].shape[0] == world * x.shape[0]
        ctx.mark_non_differentiable(*out[1:])
        ctx.flight, ctx.like = flight, (x.shape, x.dtype, x.device)  # type: ignore[attr-defined]
        return out

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor, *extra_grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        summed = grad.contiguous().clone()
        ctx.flight.reduce = (dist.all_reduce(summed, async_op=True), summed)  # type: ignore[attr-defined]
        shape, dtype, device = ctx.like  # type: ignore[attr-defined]
        return torch.zeros((), dtype=dtype, device=device).expand(shape), None


class InfoNCETerm(NamedTuple):
    """One InfoNCE term's local inputs: the arguments of `info_nce` but `tau` and
    `chunk_size` (a NamedTuple, so TrainPipelineSparseDist's fx tracer passes it through)."""

    anchor: torch.Tensor
    positive: torch.Tensor
    anchor_ids: torch.Tensor
    positive_ids: torch.Tensor
    negatives: torch.Tensor | None = None
    negative_ids: torch.Tensor | None = None
    candidate_q: torch.Tensor | None = None
    uniform_p: float = 0.0
    anchor_sets: tuple[torch.Tensor, torch.Tensor] | None = None


def info_nce_terms_across_ranks(
    terms: list[InfoNCETerm], tau: float, chunk_size: int = 0, flight: PositivesInFlight | None = None
) -> list[torch.Tensor]:
    """`info_nce` of each term: this rank's anchors against the GLOBAL batch's candidates.

    The in-batch candidates are every rank's positives (an all-gather, in rank order:
    the global batch's order), plus the extra negatives, which every rank already holds
    in full. Anchor i's target is its own positive at column rank * B + i; logQ, the
    false-negative masks and the positive sets apply to the gathered candidates as to
    one rank's. Each loss is world_size times this rank's share of the global mean, so
    the mean over ranks is the one-rank loss of the global batch and the averaged
    gradients (what DDP applies) are its gradients.

    ONE collective forward and one backward serve all the terms: each collective is a
    point where the ranks wait for the slowest, so the terms' positives, their ids and
    q (same B rows on every rank) travel as one all-gather, and the global count of
    anchors with a positive comes from the ids. Collective: every rank calls it with
    the same terms, B and M.

    Args:
        terms: each term's local inputs (`InfoNCETerm`; `candidate_q` is [B + M]: this
            rank's positives, then the extra negatives).
        tau, chunk_size: as `info_nce`, shared by the terms.
        flight: the gather `send_positives(terms)` started earlier (None: start it here).
    """
    world = dist.get_world_size() if dist.is_initialized() else 1
    if world == 1:
        return [
            info_nce(t.anchor, t.positive, t.anchor_ids, t.positive_ids, tau, t.negatives, t.negative_ids,
                     t.candidate_q, t.uniform_p, chunk_size, t.anchor_sets)
            for t in terms
        ]  # fmt: skip
    b = terms[0].positive.shape[0]
    flight = flight or PositivesInFlight(terms)
    cands, *gathered = flight.receive()
    widths = flight.widths
    rest = iter(gathered)
    out = []
    for t, cand in zip(terms, cands.split(widths, dim=1)):
        cand_ids = next(rest)
        q = None if t.candidate_q is None else torch.cat([next(rest), t.candidate_q[b:]])
        valid = (cand_ids >= 0).sum().to(torch.float64)
        out.append(
            info_nce(
                t.anchor, cand.contiguous(), t.anchor_ids, t.positive_ids, tau, t.negatives, t.negative_ids,
                q, t.uniform_p, chunk_size, t.anchor_sets,
                candidate_ids=cand_ids, target_offset=dist.get_rank() * b,
                denominator=valid.clamp_min(1) / world,
            )  # fmt: skip
        )
    return out


def send_positives(terms: list[InfoNCETerm]) -> PositivesInFlight | None:
    """Start sending `terms`' positives to every rank, for `info_nce_terms_across_ranks(terms,
    ..., flight)` to receive after other work; None on one rank, where nothing travels."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    return PositivesInFlight(terms) if world > 1 else None


def _local_q(candidate_q: torch.Tensor | None, b: int) -> tuple[torch.Tensor, ...]:
    """This rank's positives' q, to gather (none without logQ)."""
    return () if candidate_q is None else (candidate_q[:b].detach(),)


def rating_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The rating head's auxiliary loss: weighted mean squared error.

    Args:
        pred: [B] the head's output (an affine map of the row's logit).
        target: [B] the row's rating, standardised with the training ratings' mean and std.
        weights: [B] 1 for real rows, 0 for padding.

    Returns:
        sum(w * (pred - target)^2) / max(sum(w), 1), a scalar.
    """
    return (weights * (pred - target).pow(2)).sum() / weights.sum().clamp_min(1.0)
