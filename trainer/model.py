"""The DLRREC model: a DLRM whose dense arch also holds the co-trained projection towers.

Shape legend: B = batch size, F = sparse features, D = embedding dim, T = towers,
C = content dim (384), Dd = dense features.

    dense [B, Dd] --DenseArch--> [B, D] ----------------------.
    sparse KJT   --SparseArch--> [B, F, D] ---------------------+--InteractionArch--OverArch--> logit [B]
    content [B, T, C] --ProjectionArch (one batched op)--> [B, T, D]

`DLRRECTrain` adds the loss: weighted BCE + w1 InfoNCE(item-item) + w2 InfoNCE(user-user)
and returns what `TrainPipelineSparseDist` consumes. It also holds the frozen entity-vector
tables (`trainer/content_tables.py`): towers whose vector is not per row, and every InfoNCE
vector, are looked up there by id, and `content` is assembled in tower order. The baselines
reuse it: a plain DLRM is `DLRREC` with no towers, and `BiasedMF` is p_u . q_i + b_u + b_i + g
over the id tables.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from trainer.content_tables import ContentTables, feature_key
from trainer.data import Batch
from trainer.loss import InfoNCEOptions, InfoNCETerm, info_nce_terms_across_ranks, rating_loss

# InfoNCE loops over row blocks by shape and gathers across ranks; keep it one opaque call when
# TrainPipelineSparseDist fx-traces the forward to find the sharded modules.
torch.fx.wrap("info_nce_terms_across_ranks")


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


def mlp(sizes: list[int], dropout: float, last_activation: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2 or last_activation:
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
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

    Example::

        arch = ProjectionArch(2, 384, 128, 32, 0.1)
        z = arch(torch.rand(8, 2, 384))  # [8, 2, 32]
    """

    def __init__(self, towers: int, in_dim: int, hidden: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        dims = [in_dim, hidden, out_dim] if hidden > 0 else [in_dim, out_dim]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for a, b in zip(dims[:-1], dims[1:]):
            w = torch.empty(towers, a, b)
            for t in range(towers):
                nn.init.kaiming_uniform_(w[t].T, a=math.sqrt(5))  # nn.Linear's init, per tower
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(torch.zeros(towers, 1, b)))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.towers = towers

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """x: [T, N, C] -> [T, N, D] (tower t applied to x[t])."""
        n_layers = len(self.weights)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
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
        """content: [B, T, C]. Returns: [B, T, D]."""
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


class DLRREC(nn.Module):
    """DLRM + co-trained projection towers.

    Args:
        ebc: EmbeddingBagCollection (dim D) over the F sparse features.
        dense_in: Dd.
        towers: T content towers, each C -> D (or C -> `tower_dim`, then lifted to D).
        content_dim: C.
        arch: dict with `dense_arch`, `over_arch`, `tower_hidden`, `dropout` and optionally
            `tower_dim` (0 or D = towers output D; below D, a per-tower linear
            tower_dim -> D map feeds the interaction, while InfoNCE reads the tower outputs).

    Example::

        model = DLRREC(ebc, dense_in=2, towers=2, content_dim=384,
                       arch={"dense_arch": [64], "over_arch": [256, 64], "tower_hidden": 128, "dropout": 0.1})
    """

    def __init__(
        self,
        ebc: EmbeddingBagCollection,
        dense_in: int,
        towers: int,
        content_dim: int,
        arch: dict[str, object],
    ) -> None:
        super().__init__()
        dims = {c.embedding_dim for c in ebc.embedding_bag_configs()}
        if len(dims) != 1:
            raise ValueError(f"all tables need one embedding dim, got {sorted(dims)}")
        d = dims.pop()
        n_sparse = sum(len(c.feature_names) for c in ebc.embedding_bag_configs())
        dropout = float(arch["dropout"])  # type: ignore[arg-type]
        self.towers = towers
        self.sparse_arch = SparseArch(ebc)
        self.dense_arch = DenseArch(dense_in, list(arch["dense_arch"]), d)  # type: ignore[call-overload]
        tower_dim = int(arch.get("tower_dim", 0)) or d  # type: ignore[call-overload]
        if tower_dim > d:
            raise ValueError(f"tower_dim {tower_dim} is above the embedding dim {d}")
        self.projection_arch = ProjectionArch(
            towers, content_dim, int(arch["tower_hidden"]), tower_dim, dropout  # type: ignore[call-overload]
        )
        # narrow towers (the product's 32-d content embeddings) in a wider interaction space
        self.tower_map: nn.Module = (
            ProjectionArch(towers, tower_dim, 0, d, 0.0) if towers and tower_dim < d else nn.Identity()
        )
        self.inter_arch = InteractionArch(1 + n_sparse + towers)
        self.over_arch = OverArch(
            d + self.inter_arch.num_pairs, list(arch["over_arch"]), dropout  # type: ignore[call-overload]
        )

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


class DLRRECTrain(nn.Module):
    """DLRREC plus its loss: weighted BCE + w1 InfoNCE(item-item) + w2 InfoNCE(user-user).

    Args:
        model: the DLRREC model (or the BiasedMF baseline, which has no towers).
        pos_weight: weight of positive rows in the BCE (n_neg / n_pos for `balanced`).
        towers: (item_tower, user_tower) indices into the content towers, -1 if absent.
        w_item_item, w_user_user: the paper's w1, w2 (0 disables a term).
        tau: InfoNCE temperature.
        emb_l2: L2 penalty on the batch's pooled embeddings (works with any fused optimizer).
        nce: logQ correction, extra-negative catalogue sizes and chunking of InfoNCE.
        content_tables: the frozen entity-vector tables (None when no tower needs one).
        tower_spec: (column, input) of each tower (`TrainingData.tower_spec`): input ""
            = the next per-row vector of `batch.content`, else the `content_tables`
            feature to read (`{col}/row` by entity id, `{col}_keyed/row` by row key).

    Returns (forward): `(loss, (loss, logits, labels, weights, parts))`, all detached but
    the first; `parts` is [3] = (rec, item_item, user_user). In eval mode the InfoNCE
    terms are not computed (0 in `loss` and `parts`): evaluation keeps only the logits,
    and its batches carry no positives (`make_batch` with `rng=None`).

    Example::

        train_model = DLRRECTrain(model, 0.8, (1, 0), w_item_item=0.1, w_user_user=0.1, tau=0.2)
        loss, (_, logits, labels, weights, parts) = train_model(batch)
    """

    def __init__(
        self,
        model: DLRREC | BiasedMF,
        pos_weight: float,
        towers: tuple[int, int],
        w_item_item: float,
        w_user_user: float,
        tau: float,
        emb_l2: float = 0.0,
        nce: InfoNCEOptions | None = None,
        content_tables: ContentTables | None = None,
        tower_spec: list[tuple[str, str]] | None = None,
        rating: tuple[float, float, float] = (0.0, 0.0, 1.0),
    ) -> None:
        super().__init__()
        # the rating head (trainer/loss.py rating_loss): (weight, train mean, train std)
        self.rating_weight, self.rating_mean, self.rating_std = rating
        if self.rating_weight > 0:
            self.rating_head = nn.Linear(1, 1)
            nn.init.ones_(self.rating_head.weight)
            nn.init.zeros_(self.rating_head.bias)
        self.tower_spec = list(tower_spec or [])
        if content_tables is None and any(src for _, src in self.tower_spec):
            raise ValueError("towers read from entity tables need content_tables")
        self.emb_l2 = emb_l2
        self.nce = nce or InfoNCEOptions()
        self.model = model
        self.pos_weight = pos_weight
        # fixed per run (not read from the batch) so the forward stays fx-traceable
        self.item_tower, self.user_tower = towers
        self.w_item_item = w_item_item
        self.w_user_user = w_user_user
        self.tau = tau
        # registered last: sharding materialises (randomly initialises) tables in module
        # order, so the id tables draw the same initial weights as without content tables
        self.content_tables = content_tables

    def forward(
        self, batch: Batch
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        vec = self.content_tables(batch.entity) if self.content_tables is not None else {}
        return self.loss(batch, self.tower_input(batch.content, vec), vec)

    def loss(
        self, batch: Batch, content: torch.Tensor, vec: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The forward given the towers' input [B, T, C] and the looked-up entity vectors."""
        logits, emb = self.model(batch.dense, batch.sparse, content)
        w = batch.weights * torch.where(batch.labels > 0.5, self.pos_weight, 1.0)
        bce = nn.functional.binary_cross_entropy_with_logits(logits, batch.labels, reduction="none")
        rec = (bce * w).sum() / batch.weights.sum().clamp_min(1.0)
        zero = logits.new_zeros(())
        terms: dict[str, InfoNCETerm] = {}
        # eval mode scores rows: the InfoNCE terms (most of an eval batch's cost) stay 0
        if self.training and self.w_item_item > 0 and self.item_tower >= 0:
            assert isinstance(self.model, DLRREC)
            towers = self.model.projection_arch
            col = self.tower_spec[self.item_tower][0]
            terms["ii"] = InfoNCETerm(
                towers.project_one(self.item_tower, content[:, self.item_tower]),
                towers.project_one(self.item_tower, vec[feature_key(col, "pos")]),
                batch.item_ids, batch.ii_pos_ids,
                towers.project_one(self.item_tower, vec[feature_key(col, "neg")]), batch.ii_neg_ids,
                torch.cat([batch.ii_pos_q, batch.ii_neg_q]) if self.nce.log_q else None, self.nce.uniform_p[0],
                (batch.ii_set_lengths, batch.ii_set_ids),
            )  # fmt: skip
        if self.training and self.w_user_user > 0 and self.user_tower >= 0:
            assert isinstance(self.model, DLRREC)
            towers = self.model.projection_arch
            # anchors use the full train profile (the entity table), as positives do
            col = self.tower_spec[self.user_tower][0]
            terms["uu"] = InfoNCETerm(
                towers.project_one(self.user_tower, vec[feature_key(col, "row")]),
                towers.project_one(self.user_tower, vec[feature_key(col, "pos")]),
                batch.user_ids, batch.uu_pos_ids,
                towers.project_one(self.user_tower, vec[feature_key(col, "neg")]), batch.uu_neg_ids,
                torch.cat([batch.uu_pos_q, batch.uu_neg_q]) if self.nce.log_q else None, self.nce.uniform_p[1],
                (batch.uu_set_lengths, batch.uu_set_ids),
            )  # fmt: skip
        # both terms share one gather across ranks (forward) and one all-reduce (backward);
        # indexed by position: under the pipeline's fx trace the result is one proxy
        names = list(terms)
        nce = info_nce_terms_across_ranks(list(terms.values()), self.tau, self.nce.chunk_size) if terms else []
        ii = nce[names.index("ii")] if "ii" in terms else zero
        uu = nce[names.index("uu")] if "uu" in terms else zero
        loss = rec + self.w_item_item * ii + self.w_user_user * uu
        if self.rating_weight > 0:
            # an affine map of the logit regresses the standardised rating of training rows
            pred = self.rating_head(logits.unsqueeze(1)).squeeze(1)
            target = (batch.ratings - self.rating_mean) / self.rating_std
            loss = loss + self.rating_weight * rating_loss(pred, target, batch.weights)
        if self.emb_l2 > 0:
            sq = emb.pow(2).sum(dim=(1, 2))
            loss = loss + self.emb_l2 * (sq * batch.weights).sum() / batch.weights.sum().clamp_min(1.0)
        parts = torch.stack([rec.detach(), ii.detach(), uu.detach()])
        return loss, (loss.detach(), logits.detach(), batch.labels, batch.weights, parts)

    def tower_input(self, per_row: torch.Tensor, vec: dict[str, torch.Tensor]) -> torch.Tensor:
        """per_row [B, R, C] and the looked-up vectors -> the towers' input [B, T, C]."""
        if not any(src for _, src in self.tower_spec):
            return per_row
        parts, r = [], 0
        for _, src in self.tower_spec:
            parts.append(vec[src] if src else per_row[:, r])
            r += int(not src)
        return torch.stack(parts, dim=1)
