"""The DLRREC model: a DLRM whose dense arch also holds the co-trained projection towers.

Shape legend: B = batch size, F = sparse features, D = embedding dim, T = towers,
C = content dim (384), Dd = dense features.

    dense [B, Dd] --DenseArch--> [B, D] ----------------------.
    sparse KJT   --SparseArch--> [B, F, D] ---------------------+--InteractionArch--OverArch--> logit [B]
    content [B, T, C] --ProjectionArch (one batched op)--> [B, T, D]

`DLRRECTrain` adds the loss: weighted BCE + w1 InfoNCE(item-item) + w2 InfoNCE(user-user)
(one `ContrastiveTerm` module serves both pair kinds) and returns what
`TrainPipelineSparseDist` consumes. Towers whose vector is not per row, and every InfoNCE
vector, take their frozen entity vectors from the batch (`Batch.vectors`, read from the
disk-backed stores of `trainer/vector_store.py` by the data loader), and `content` is
assembled in tower order. The baselines
reuse it: a plain DLRM is `DLRREC` with no towers, and `BiasedMF` is p_u . q_i + b_u + b_i + g
over the id tables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from trainer.data import Batch, PairBatch
from trainer.loss import (
    InfoNCEOptions,
    InfoNCETerm,
    PositivesInFlight,
    info_nce_terms_across_ranks,
    rating_loss,
    send_positives,
)
from trainer.vector_store import feature_key

# InfoNCE loops over row blocks by shape and gathers across ranks; keep it one opaque call when
# TrainPipelineSparseDist fx-traces the forward to find the sharded modules.
torch.fx.wrap("info_nce_terms_across_ranks")
torch.fx.wrap("send_positives")


class _PairwiseDots(torch.autograd.Function):
    """Upper-triangle Gram entries per sample; the backward is one bmm instead of two.

    x is both operands of x @ x^T, so autograd's backward runs two bmm (plus an
    index_put for the triangle). On CPU a bmm over B tiny N x N products is bound by
    per-matrix overhead, and `benchmarks/train_bench.py --profile` showed the
    interaction's bmm as half the dense step; one bmm on (G + G^T) halves it.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, pairs: torch.Tensor
    ) -> torch.Tensor:
        ctx.save_for_backward(x, pairs)
        return torch.bmm(x, x.transpose(1, 2)).flatten(1).index_select(1, pairs)

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor, None]:
        x, pairs = ctx.saved_tensors  # type: ignore[attr-defined]
        n = x.shape[1]
        g = grad.new_zeros(grad.shape[0], n * n).index_copy_(1, pairs, grad).view(-1, n, n)
        return torch.bmm(g + g.transpose(1, 2), x), None


def pairwise_dots(x: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """x: [B, N, D], pairs: flat indices i * N + j (i < j). Returns: [B, P] of x_i . x_j."""
    return _PairwiseDots.apply(x, pairs)


# a custom autograd function: one opaque call for TrainPipelineSparseDist's fx tracer
torch.fx.wrap("pairwise_dots")


_INT64 = torch.iinfo(torch.int64)
_INT16_MIN = -(2**15)


class Dropout(nn.Module):
    """nn.Dropout, with a mask that costs a third as much on CPU.

    torch's CPU dropout draws one mt19937 number per element, 7% of a training step at
    1M rows (two ranks on two cores). Here each 64-bit draw gives four 16-bit lanes,
    and an element is dropped where its lane falls below p * 2^16 (rounded): the drop
    probability is p to within 2^-17. On other devices it is `F.dropout` (a fused kernel).

    Args:
        p: the drop probability, in [0, 1).
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.cut = _INT16_MIN + round(p * 65536)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if x.device.type != "cpu":
            return nn.functional.dropout(x, self.p, training=True)
        n = x.numel()
        lanes = torch.randint(_INT64.min, _INT64.max, ((n + 3) // 4,), dtype=torch.int64).view(torch.int16)[:n]
        return _KeepMasked.apply(x, (lanes >= self.cut).view(x.shape), 1.0 / (1.0 - self.p))


class _KeepMasked(torch.autograd.Function):
    """x * scale where `keep`, else 0; the backward masks the gradient alike (saves only the bool mask)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(keep)
        ctx.scale = scale  # type: ignore[attr-defined]
        return torch.where(keep, x * scale, 0.0)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        (keep,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return torch.where(keep, grad * ctx.scale, 0.0), None, None  # type: ignore[attr-defined]


def mlp(sizes: list[int], dropout: float, last_activation: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2 or last_activation:
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(Dropout(dropout))
    return nn.Sequential(*layers)


class SparseArch(nn.Module):
    """Pooled embeddings of every sparse feature.

    Args:
        ebc: the (possibly sharded) EmbeddingBagCollection, one table per feature.

    Example::

        arch = SparseArch(ebc)
        emb = arch(kjt)  # [B, F, D]
    """

    def __init__(self, ebc: EmbeddingBagCollection) -> None:
        super().__init__()
        self.embedding_bag_collection = ebc
        self.feature_names = [f for c in ebc.embedding_bag_configs() for f in c.feature_names]

    def forward(self, features: KeyedJaggedTensor) -> torch.Tensor:
        """Returns: [B, F, D]."""
        kt = self.embedding_bag_collection(features)
        # By name, not a view of kt.values(): a sharded EBC's output keys are grouped by
        # sharding, not in feature order (a 2-rank table-wise check showed it).
        per_feature = kt.to_dict()
        return torch.stack([per_feature[f] for f in self.feature_names], dim=1)


class DenseArch(nn.Module):
    """MLP over the dense features.

    Args:
        in_features: Dd.
        hidden: hidden sizes.
        out_features: D.

    Example::

        arch = DenseArch(2, [64], 32)
        out = arch(torch.rand(8, 2))  # [8, 32]
    """

    def __init__(self, in_features: int, hidden: list[int], out_features: int) -> None:
        super().__init__()
        self.model = mlp([max(in_features, 1), *hidden, out_features], 0.0, last_activation=True)
        self.in_features = in_features

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        """Returns: [B, D]."""
        if self.in_features == 0:
            dense = torch.zeros(dense.shape[0], 1, device=dense.device, dtype=dense.dtype)
        return self.model(dense)


class ProjectionArch(nn.Module):
    """T independent C->H->D projection towers evaluated as one batched matmul each layer.

    Args:
        towers: T.
        in_dim: C (384 for MiniLM).
        hidden: H (0 = a single C->D linear layer).
        out_dim: D.
        dropout: dropout after the hidden layer.
        slots: the tower of each input slot of `forward` (S slots; a tower may serve
            several); () = slot t is tower t.

    Example::

        arch = ProjectionArch(2, 384, 128, 32, 0.1)
        z = arch(torch.rand(8, 2, 384))  # [8, 2, 32]
        shared = ProjectionArch(2, 384, 128, 32, 0.1, slots=(0, 1, 1))
        z = shared(torch.rand(8, 3, 384))  # [8, 3, 32]: slot 2 through tower 1
    """

    def __init__(
        self, towers: int, in_dim: int, hidden: int, out_dim: int, dropout: float, slots: tuple[int, ...] = ()
    ) -> None:
        super().__init__()
        dims = [in_dim, hidden, out_dim] if hidden > 0 else [in_dim, out_dim]
        if towers == 0:  # no parameters: empty ones never get a gradient, so no optimizer state
            dims = dims[:1]  # for a checkpoint to hold, and unsealing or resuming would ask for it
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for a, b in zip(dims[:-1], dims[1:]):
            w = torch.empty(towers, a, b)
            for t in range(towers):
                nn.init.kaiming_uniform_(w[t].T, a=math.sqrt(5))  # nn.Linear's init, per tower
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(torch.zeros(towers, 1, b)))
        self.dropout = Dropout(dropout) if dropout > 0 else nn.Identity()
        self.towers = towers
        self.shared = bool(slots)
        self.register_buffer("slot_tower", torch.tensor(slots, dtype=torch.long), persistent=False)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """x: [S, N, C] -> [S, N, D] (slot s through its tower; tower t = slot t unless shared)."""
        n_layers = len(self.weights)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            if self.shared:  # static per model: fx-traced
                w, b = w.index_select(0, self.slot_tower), b.index_select(0, self.slot_tower)
            x = torch.baddbmm(b, x, w)
            if i < n_layers - 1:
                x = self.dropout(torch.relu(x))
        return x

    def project_one(self, tower: int, x: torch.Tensor) -> torch.Tensor:
        """x: [N, C] through tower `tower` -> [N, D]."""
        n_layers = len(self.weights)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = torch.addmm(b[tower], x, w[tower])
            if i < n_layers - 1:
                x = self.dropout(torch.relu(x))
        return x

    def forward(self, content: torch.Tensor) -> torch.Tensor:
        """content: [B, S, C]. Returns: [B, S, D]."""
        if self.towers == 0:
            return content.new_zeros(content.shape[0], 0, self.weights[-1].shape[-1] if len(self.weights) else 0)
        return self.project(content.transpose(0, 1)).transpose(0, 1)


class InteractionArch(nn.Module):
    """Pairwise dot products of all feature vectors, concatenated with the dense output.

    Args:
        num_vectors: 1 + F + T.

    Example::

        arch = InteractionArch(4)
        out = arch(torch.rand(8, 32), torch.rand(8, 3, 32))  # [8, 32 + 6]
    """

    def __init__(self, num_vectors: int) -> None:
        super().__init__()
        self.pairs: torch.Tensor
        rows, cols = torch.triu_indices(num_vectors, num_vectors, offset=1)
        self.register_buffer("pairs", rows * num_vectors + cols, persistent=False)
        self.num_pairs = int(rows.numel())

    def forward(self, dense: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
        """dense: [B, D], others: [B, F + T, D]. Returns: [B, D + pairs]."""
        x = torch.cat([dense.unsqueeze(1), others], dim=1)
        return torch.cat([dense, pairwise_dots(x, self.pairs)], dim=1)


class OverArch(nn.Module):
    """The prediction MLP.

    Args:
        in_features: D + pairs.
        hidden: hidden sizes (a final 1 is added).
        dropout: dropout after each hidden layer.

    Example::

        arch = OverArch(38, [64], 0.1)
        logit = arch(torch.rand(8, 38))  # [8]
    """

    def __init__(self, in_features: int, hidden: list[int], dropout: float) -> None:
        super().__init__()
        self.model = mlp([in_features, *hidden, 1], dropout, last_activation=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns: [B]."""
        return self.model(x).squeeze(-1)


@dataclass(frozen=True, kw_only=True)
class ArchSizes:
    """The layer sizes of `DLRREC` (`trainer.main.build_arch_sizes` reads them from the config).

    Args:
        dense_arch: hidden sizes of the dense MLP.
        over_arch: hidden sizes of the prediction MLP (a final 1 is added).
        tower_hidden: H of each projection tower (0 = a single C -> D layer).
        tower_dim: output dim of the towers (0 or D = towers output D; below D, a
            per-tower linear tower_dim -> D map feeds the interaction, while InfoNCE
            reads the tower outputs).
        dropout: after each tower's hidden layer and each over-arch hidden layer.
    """

    dense_arch: tuple[int, ...] = (64,)
    over_arch: tuple[int, ...] = (256, 64)
    tower_hidden: int = 128
    tower_dim: int = 0
    dropout: float = 0.1


class DLRREC(nn.Module):
    """DLRM + co-trained projection towers.

    Args:
        ebc: EmbeddingBagCollection (dim D) over the F sparse features.
        dense_in: Dd.
        towers: T content towers, each C -> D (or C -> `tower_dim`, then lifted to D).
        content_dim: C.
        sizes: the MLP and tower sizes and the dropout (`ArchSizes`).
        history_sources: H more content inputs after the T towers' (`train.history_content`:
            a history bag's mean member vector), the k-th projected by tower
            `history_sources[k]`: no weights of their own.

    Example::

        model = DLRREC(ebc, dense_in=2, towers=2, content_dim=384, sizes=ArchSizes(dropout=0.1))
    """

    def __init__(
        self,
        ebc: EmbeddingBagCollection,
        dense_in: int,
        towers: int,
        content_dim: int,
        sizes: ArchSizes,
        history_sources: tuple[int, ...] = (),
    ) -> None:
        super().__init__()
        if any(not 0 <= t < towers for t in history_sources):
            raise ValueError(f"history_sources {history_sources}: not towers of {towers}")
        dims = {c.embedding_dim for c in ebc.embedding_bag_configs()}
        if len(dims) != 1:
            raise ValueError(f"all tables need one embedding dim, got {sorted(dims)}")
        d = dims.pop()
        n_sparse = sum(len(c.feature_names) for c in ebc.embedding_bag_configs())
        self.towers = towers
        self.sparse_arch = SparseArch(ebc)
        self.dense_arch = DenseArch(dense_in, list(sizes.dense_arch), d)
        tower_dim = sizes.tower_dim or d
        if tower_dim > d:
            raise ValueError(f"tower_dim {tower_dim} is above the embedding dim {d}")
        # the history inputs share their source towers' weights (and lifts)
        slots = (*range(towers), *history_sources) if history_sources else ()
        self.projection_arch = ProjectionArch(
            towers, content_dim, sizes.tower_hidden, tower_dim, sizes.dropout, slots
        )
        # narrow towers (the product's 32-d content embeddings) in a wider interaction space
        self.tower_map: nn.Module = (
            ProjectionArch(towers, tower_dim, 0, d, 0.0, slots) if towers and tower_dim < d else nn.Identity()
        )
        self.inter_arch = InteractionArch(1 + n_sparse + towers + len(history_sources))
        self.over_arch = OverArch(d + self.inter_arch.num_pairs, list(sizes.over_arch), sizes.dropout)

    def forward(
        self, dense: torch.Tensor, sparse: KeyedJaggedTensor, content: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns: logits [B] and the pooled sparse embeddings [B, F, D] (for regularisers)."""
        d = self.dense_arch(dense)
        e = self.sparse_arch(sparse)
        p = self.tower_map(self.projection_arch(content))
        others = torch.cat([e, p], dim=1) if self.towers else e  # static: fx-traced
        return self.over_arch(self.inter_arch(d, others)), e


class BiasedMF(nn.Module):
    """The biased matrix-factorisation baseline: logit = p_u . q_i + b_u + b_i + g.

    Each of the two id tables has D columns: D - 1 factor columns and, last, the bias,
    so the biases are sharded and optimised with the factors by the same fused
    optimizer (and D stays a multiple of 4, as fbgemm's kernels require).

    Args:
        ebc: EmbeddingBagCollection with exactly the `user_id` and `item_id` features,
            both of dim D.

    Example::

        mf = BiasedMF(ebc)
        logits, emb = mf(dense, kjt, content)  # [B], [B, 2, D]; dense and content unused
    """

    def __init__(self, ebc: EmbeddingBagCollection) -> None:
        super().__init__()
        self.sparse_arch = SparseArch(ebc)
        if sorted(self.sparse_arch.feature_names) != ["item_id", "user_id"]:
            raise ValueError(f"BiasedMF needs exactly user_id and item_id, got {self.sparse_arch.feature_names}")
        self.user = self.sparse_arch.feature_names.index("user_id")
        self.item = self.sparse_arch.feature_names.index("item_id")
        self.global_bias = nn.Parameter(torch.zeros(()))

    def forward(
        self, dense: torch.Tensor, sparse: KeyedJaggedTensor, content: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns: logits [B] and the pooled id embeddings [B, 2, D] (for regularisers)."""
        e = self.sparse_arch(sparse)
        u, i = e[:, self.user], e[:, self.item]
        return (u[:, :-1] * i[:, :-1]).sum(-1) + u[:, -1] + i[:, -1] + self.global_bias, e


@dataclass(frozen=True, kw_only=True)
class LossWeights:
    """The recommendation loss's weights beside InfoNCE (`trainer.main.build_loss_weights`).

    Args:
        pos_weight: weight of positive rows in the BCE (n_neg / n_pos for `balanced`).
        emb_l2: L2 penalty on the batch's pooled embeddings (works with any fused optimizer).
        rating_weight: weight of the rating head's loss (0 = no head; `trainer/loss.py`
            rating_loss).
        rating_mean, rating_std: the training ratings' mean and std (its target's scale).
    """

    pos_weight: float = 1.0
    emb_l2: float = 0.0
    rating_weight: float = 0.0
    rating_mean: float = 0.0
    rating_std: float = 1.0


class ContrastiveTerm(nn.Module):
    """The inputs of one InfoNCE term: a tower's projections of the anchors, of their
    SWING positives and of the extra negatives, with their ids.

    One module serves both pair kinds: item-item (anchors: the rows' items) and user-user
    (anchors: the rows' users). Positives and extra negatives are looked up in the
    entity tables (`{column}/pos`, `{column}/neg`). It holds no parameters: the towers
    are the model's, handed to `forward`; `DLRRECTrain` computes every term's loss in
    one `info_nce_terms_across_ranks` call.

    Args:
        tower: index of the content tower that projects this kind's vectors.
        column: that tower's content column.
        anchor: where the anchors' vectors come from: "" = the tower's input
            (`content[:, tower]`), else the `Batch.vectors` key to read (user-user: the
            user's full train profile, as for the positives).
        options: tau, logQ, the uniform extra-negative probability and chunking.
        weight: the term's weight in the loss (the paper's w1 or w2).

    Example::

        term = ContrastiveTerm(1, "item_text", "", InfoNCEOptions(tau=0.2), weight=0.1)
        inputs = term(model.projection_arch, content, vec, batch.item_ids, batch.ii)  # InfoNCETerm
    """

    def __init__(self, tower: int, column: str, anchor: str, options: InfoNCEOptions, *, weight: float) -> None:
        super().__init__()
        self.tower = tower
        self.column = column
        self.anchor = anchor
        self.options = options
        self.loss_weight = weight

    def forward(
        self,
        towers: ProjectionArch,
        content: torch.Tensor,
        vec: dict[str, torch.Tensor],
        anchor_ids: torch.Tensor,
        pairs: PairBatch,
    ) -> InfoNCETerm:
        """content: [B, T, C] the towers' input; vec: the batch's entity vectors (float16)."""
        t, o = self.tower, self.options
        anchor = vec[self.anchor].float() if self.anchor else content[:, t]
        return InfoNCETerm(
            towers.project_one(t, anchor),
            towers.project_one(t, vec[feature_key(self.column, "pos")].float()),
            anchor_ids, pairs.pos_ids,
            towers.project_one(t, vec[feature_key(self.column, "neg")].float()), pairs.neg_ids,
            torch.cat([pairs.pos_q, pairs.neg_q]) if o.log_q else None, o.uniform_p,
            (pairs.set_lengths, pairs.set_ids),
        )  # fmt: skip


class DLRRECTrain(nn.Module):
    """DLRREC plus its loss: weighted BCE + w1 InfoNCE(item-item) + w2 InfoNCE(user-user).

    Args:
        model: the DLRREC model (or the BiasedMF baseline, which has no towers).
        weights: the BCE's positive weight, the embedding L2 and the rating head.
        terms: the (item-item, user-user) InfoNCE terms; None = off.
        tower_spec: (column, input) of each tower (`TrainingData.tower_spec`): input ""
            = the next per-row vector of `batch.content`, else the `batch.vectors` key
            to read (`{col}/row` by entity id, `{col}_keyed/row` by row key).

    Returns (forward): `(loss, (loss, logits, labels, weights, parts))`, all detached but
    the first; `parts` is [3] = (rec, item_item, user_user). In eval mode the InfoNCE
    terms are not computed (0 in `loss` and `parts`): evaluation keeps only the logits,
    and its batches carry no positives (`make_batch` with `rng=None`).

    Example::

        train_model = DLRRECTrain(model, LossWeights(pos_weight=0.8), (item_item, None), spec)
        loss, (_, logits, labels, weights, parts) = train_model(batch)
    """

    def __init__(
        self,
        model: DLRREC | BiasedMF,
        weights: LossWeights | None = None,
        terms: tuple[ContrastiveTerm | None, ContrastiveTerm | None] = (None, None),
        tower_spec: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__()
        self.weights = weights or LossWeights()
        if self.weights.rating_weight > 0:  # an affine map of the logit: starts as the identity
            self.rating_head = nn.Linear(1, 1)
            nn.init.ones_(self.rating_head.weight)
            nn.init.zeros_(self.rating_head.bias)
        self.tower_spec = list(tower_spec or [])
        on = [t for t in terms if t is not None]
        if on and not isinstance(model, DLRREC):
            raise ValueError("InfoNCE terms need a model with projection towers (DLRREC)")
        if len({(t.options.tau, t.options.chunk_size) for t in on}) > 1:
            raise ValueError("the InfoNCE terms share one tau and chunk size (one call across ranks)")
        self.model = model
        # fixed per run (not read from the batch) so the forward stays fx-traceable
        self.item_item, self.user_user = terms

    def forward(
        self, batch: Batch
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        return self.loss(batch, self.tower_input(batch.content, batch.vectors), batch.vectors)

    def loss(
        self, batch: Batch, content: torch.Tensor, vec: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The forward given the towers' input [B, T, C] and the batch's entity vectors."""
        lw = self.weights
        # the InfoNCE positives leave for the other ranks first and are received after the
        # model's forward (`PositivesInFlight`): the gather runs while this rank computes
        nce_inputs = self.contrastive_inputs(batch, content, vec)
        flight = send_positives(nce_inputs) if nce_inputs else None
        logits, emb = self.model(batch.dense, batch.sparse, content)
        w = batch.weights * torch.where(batch.labels > 0.5, lw.pos_weight, 1.0)
        bce = nn.functional.binary_cross_entropy_with_logits(logits, batch.labels, reduction="none")
        rec = (bce * w).sum() / batch.weights.sum().clamp_min(1.0)
        ii, uu = self.contrastive(nce_inputs, flight, logits.new_zeros(()))
        w_ii = self.item_item.loss_weight if self.item_item is not None else 0.0
        w_uu = self.user_user.loss_weight if self.user_user is not None else 0.0
        loss = rec + w_ii * ii + w_uu * uu
        if lw.rating_weight > 0:
            # an affine map of the logit regresses the standardised rating of training rows
            pred = self.rating_head(logits.unsqueeze(1)).squeeze(1)
            target = (batch.ratings - lw.rating_mean) / lw.rating_std
            loss = loss + lw.rating_weight * rating_loss(pred, target, batch.weights)
        if lw.emb_l2 > 0:
            sq = emb.pow(2).sum(dim=(1, 2))
            loss = loss + lw.emb_l2 * (sq * batch.weights).sum() / batch.weights.sum().clamp_min(1.0)
        parts = torch.stack([rec.detach(), ii.detach(), uu.detach()])
        return loss, (loss.detach(), logits.detach(), batch.labels, batch.weights, parts)

    def contrastive_inputs(self, batch: Batch, content: torch.Tensor, vec: dict[str, torch.Tensor]) -> list[InfoNCETerm]:
        """Each InfoNCE term's inputs (item-item first); none for a term that is off, and
        none in eval mode: scoring rows needs only the logits (the terms are most of an
        eval batch's cost), and eval batches carry no positives."""
        if not self.training:
            return []
        kinds = ((self.item_item, batch.item_ids, batch.ii), (self.user_user, batch.user_ids, batch.uu))
        on = [(term, ids, pairs) for term, ids, pairs in kinds if term is not None]
        if not on:
            return []
        assert isinstance(self.model, DLRREC)
        return [term(self.model.projection_arch, content, vec, ids, pairs) for term, ids, pairs in on]

    def contrastive(
        self, inputs: list[InfoNCETerm], flight: PositivesInFlight | None, zero: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The (item-item, user-user) InfoNCE losses of `contrastive_inputs`, unweighted;
        `zero` for a term that is off. The terms share one gather across ranks (`flight`,
        started by `send_positives`) and one all-reduce back."""
        if not inputs:
            return zero, zero
        first = self.item_item if self.item_item is not None else self.user_user
        assert first is not None
        options = first.options  # every term's tau and chunking are the same (__init__)
        nce = info_nce_terms_across_ranks(inputs, options.tau, options.chunk_size, flight)
        # indexed by position: under the pipeline's fx trace the result is one proxy
        ii = nce[0] if self.item_item is not None else zero
        uu = nce[len(inputs) - 1] if self.user_user is not None else zero
        return ii, uu

    def tower_input(self, per_row: torch.Tensor, vec: dict[str, torch.Tensor]) -> torch.Tensor:
        """per_row [B, R, C] and the batch's entity vectors -> the towers' input [B, T, C]."""
        if not any(src for _, src in self.tower_spec):
            return per_row
        parts, r = [], 0
        for _, src in self.tower_spec:
            parts.append(vec[src].float() if src else per_row[:, r])
            r += int(not src)
        return torch.stack(parts, dim=1)
