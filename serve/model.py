"""The exported scoring model: plain PyTorch, TorchScript-able, no TorchRec.

Shape legend: B = pairs, F = sparse features, D = embedding dim, T = towers,
C = content dim, n = entities of one kind (+1: the unknown entity's row).

Every model input of a serving pair is a function of its user or its item alone (the
val/test rule of the features stage on a random split), so the model holds one row of
inputs per entity (`EntityInputs`) and scores (user row, item row) pairs:

    users [B] --EntityInputs(user)--> bags, dense, tower output --.
    items [B] --EntityInputs(item)--> bags, dense, tower output --+--> tables, dense MLP,
                                                                       interaction, over MLP --> logit [B]

The projection towers read frozen entity vectors only, so their outputs are computed
once per entity at export (`tower_out`); the towers themselves are kept (`project`) for
vectors of entities the export has not seen. A history-content slot
(`train.history_content`: the mean member vector of a history bag through the members'
tower) is likewise a per-owner `tower_out` column.
"""

import torch
from torch import nn


def gather_bags(
    offsets: torch.Tensor, values: torch.Tensor, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bags `rows` of a CSR array as (values, per-bag start offsets) for `embedding_bag`.

    offsets: [n + 1] into `values`; rows: [B]. Returns: values [sum of lengths], offsets [B].
    """
    starts = offsets[rows]
    lengths = offsets[rows + 1] - starts
    bag_starts = torch.cumsum(lengths, 0) - lengths
    total = int(lengths.sum())
    pos = torch.arange(total, dtype=torch.long) - torch.repeat_interleave(bag_starts, lengths)
    return values[pos + torch.repeat_interleave(starts, lengths)], bag_starts


class EntityInputs(nn.Module):
    """One kind of entity's model inputs, one row per entity (row n: the unknown entity).

    Args:
        offsets: [K, n + 1] CSR offsets of the K sparse features this entity owns,
            into `values` (each feature's bags follow the previous feature's).
        values: [total] int64 table ids.
        dense: [n, Dk] float32 standardized dense features this entity owns.
        tower_out: [n, Tk + Hk, D] float32 tower outputs of this entity's content
            columns, then of the history-content slots of the bags it owns.

    Example::

        inputs = EntityInputs(torch.tensor([[0, 1, 2]]), torch.tensor([4, 7]),
                              torch.zeros(2, 1), torch.zeros(2, 0, 8))
        bags = inputs.bags(torch.tensor([1, 1]))  # [(values [2], offsets [2])]
    """

    offsets: torch.Tensor
    values: torch.Tensor
    dense: torch.Tensor
    tower_out: torch.Tensor

    def __init__(
        self,
        offsets: torch.Tensor,
        values: torch.Tensor,
        dense: torch.Tensor,
        tower_out: torch.Tensor,
    ) -> None:
        super().__init__()
        self.register_buffer("offsets", offsets)
        self.register_buffer("values", values)
        self.register_buffer("dense", dense)
        self.register_buffer("tower_out", tower_out)
        self.n = int(dense.shape[0])

    def bags(self, rows: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """For each owned sparse feature: (values, offsets) of the rows' bags."""
        out: list[tuple[torch.Tensor, torch.Tensor]] = []
        for k in range(self.offsets.shape[0]):
            out.append(gather_bags(self.offsets[k], self.values, rows))
        return out


class ScoringModel(nn.Module):
    """DLRREC (or BiasedMF) over the per-entity inputs: logit of (user row, item row) pairs.

    Args:
        users, items: the `EntityInputs` of each kind.
        tables: one `nn.EmbeddingBag` per TorchRec table (mode sum or mean as trained).
        layout: `feature_table` [F] (table of each sparse feature, in the trainer's
            feature order), `feature_source` [F] (k-th owned feature of the user (k) or
            of the item (Ku + k)), `dense_index` [Dd] (columns of cat(user dense, item
            dense) in the trainer's order), `towers` [T + H] (the T towers, then the H
            history-content slots, likewise into cat(user tower_out, item tower_out)),
            `pairs` (flat upper-triangle indices of the interaction).
        mlps: `dense_arch`, `over_arch` (nn.Sequential, eval mode, no dropout) and
            `projection` (tower layers as one [T, a, b] weight and [T, 1, b] bias each).

    Example::

        model = torch.jit.script(ScoringModel(users, items, tables, layout, mlps))
        logits = model(torch.tensor([0, 1]), torch.tensor([5, 5]))  # [2]
    """

    dense_index: torch.Tensor
    tower_index: torch.Tensor
    pairs: torch.Tensor
    feature_table: list[int]
    feature_source: list[int]

    def __init__(
        self,
        users: EntityInputs,
        items: EntityInputs,
        tables: list[nn.EmbeddingBag],
        layout: dict[str, list[int]],
        mlps: dict[str, nn.Module],
    ) -> None:
        super().__init__()
        self.users = users
        self.items = items
        self.tables = nn.ModuleList(tables)
        self.feature_table = list(layout["feature_table"])
        self.feature_source = list(layout["feature_source"])
        self.register_buffer("dense_index", torch.tensor(layout["dense_index"], dtype=torch.long))
        self.register_buffer("tower_index", torch.tensor(layout["towers"], dtype=torch.long))
        self.register_buffer("pairs", torch.tensor(layout["pairs"], dtype=torch.long))
        self.biased_mf = bool(layout["biased_mf"][0])
        self.dense_in = len(layout["dense_index"])
        self.dense_arch = mlps["dense_arch"]
        self.over_arch = mlps["over_arch"]
        self.projection = mlps["projection"]
        self.global_bias = nn.Parameter(torch.zeros(()))

    def sparse(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Pooled embeddings of every sparse feature. Returns: [B, F, D]."""
        bags = self.users.bags(users) + self.items.bags(items)
        pooled: list[torch.Tensor] = []
        for f in range(len(self.feature_table)):
            t = self.feature_table[f]
            values, offsets = bags[self.feature_source[f]]
            for i, table in enumerate(self.tables):  # a ModuleList is indexed by a constant only
                if i == t:
                    pooled.append(table(values, offsets))
        return torch.stack(pooled, dim=1)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """users, items: [B] entity rows. Returns: logits [B]."""
        e = self.sparse(users, items)
        if self.biased_mf:
            u, i = e[:, 0], e[:, 1]
            return (u[:, :-1] * i[:, :-1]).sum(-1) + u[:, -1] + i[:, -1] + self.global_bias
        if self.dense_in > 0:
            dense = torch.cat([self.users.dense[users], self.items.dense[items]], dim=1)[
                :, self.dense_index
            ]
        else:
            dense = torch.zeros(users.shape[0], 1)
        d = self.dense_arch(dense)
        towers = torch.cat([self.users.tower_out[users], self.items.tower_out[items]], dim=1)[
            :, self.tower_index
        ]
        x = torch.cat([d.unsqueeze(1), e, towers], dim=1)
        dots = torch.bmm(x, x.transpose(1, 2)).flatten(1).index_select(1, self.pairs)
        return self.over_arch(torch.cat([d, dots], dim=1)).squeeze(-1)

    @torch.jit.export
    def project(self, tower: int, x: torch.Tensor) -> torch.Tensor:
        """Content vectors x [N, C] through tower `tower` (trainer order). Returns: [N, D]."""
        return self.projection(x, tower)


class Towers(nn.Module):
    """The T projection towers, C -> (H ->) D, as trained (`trainer.model.ProjectionArch`).

    Args:
        weights: per layer [T, a, b]; biases: per layer [T, 1, b].

    Example::

        towers = Towers([torch.rand(2, 384, 64)], [torch.zeros(2, 1, 64)])
        z = towers(torch.rand(5, 384), 1)  # [5, 64]
    """

    def __init__(self, weights: list[torch.Tensor], biases: list[torch.Tensor]) -> None:
        super().__init__()
        self.weights = nn.ParameterList([nn.Parameter(w, requires_grad=False) for w in weights])
        self.biases = nn.ParameterList([nn.Parameter(b, requires_grad=False) for b in biases])
        self.n_layers = len(weights)

    def forward(self, x: torch.Tensor, tower: int) -> torch.Tensor:
        i = 0
        for w, b in zip(self.weights, self.biases):
            x = torch.addmm(b[tower], x, w[tower])
            if i < self.n_layers - 1:
                x = torch.relu(x)
            i += 1
        return x
