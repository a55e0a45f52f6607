"""Cold-start ids: one learned "cold" row per id table, trained by id dropout.

An id that never occurs in the training rows has an embedding row that training never
touches: it stays at its random initialisation. On a temporal split that is most
rows (85% of MovieLens-100K's temporal val/test rows come from users absent from
train). With `id_dropout = p`, each id table (`user_id`, `item_id`) gets one extra
row, the cold row; during training each row's id is replaced by it with probability
p, so it learns what an unknown user or item looks like (the model then leans on the
profile, content and side features), and at evaluation every id absent from the
training rows is mapped to it. Only training rows decide what is "seen".

Shape legend: B = local batch size.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from trainer.data import Batch

COLD_KEYS = ("user_id", "item_id")


def id_dropout_mask(seed: int, epoch: int, step: int, key: int, global_batch: int, p: float) -> np.ndarray:
    """Which rows of the step's global batch lose their id (a pure function, so resumes match).

    Args:
        key: index of the id feature in COLD_KEYS (independent draws per feature).

    Returns:
        bool [global_batch]; each rank takes its own slice, so any rank count draws the same.
    """
    rng = np.random.default_rng([seed, epoch, step, 7919, key])
    return rng.random(global_batch) < p


def with_cold_ids(kjt: KeyedJaggedTensor, key: str, cold: torch.Tensor, cold_id: int) -> KeyedJaggedTensor:
    """A copy of `kjt` whose single-valued feature `key` is `cold_id` where `cold` [B] is True."""
    keys = kjt.keys()
    lengths = kjt.length_per_key()
    k = keys.index(key)
    start = sum(lengths[:k])
    if lengths[k] != cold.numel():
        raise ValueError(f"{key}: expected one id per row ({cold.numel()}), got {lengths[k]} values")
    values = kjt.values().clone()
    seg = values[start : start + lengths[k]]
    seg[cold] = cold_id
    return KeyedJaggedTensor.from_lengths_sync(keys=keys, values=values, lengths=kjt.lengths())


def seen_ids(train_ids: np.ndarray, n: int) -> np.ndarray:
    """bool [n]: which ids occur in the training rows."""
    seen = np.zeros(n, bool)
    seen[train_ids] = True
    return seen


@dataclass
class ColdIds:
    """The cold rows of a run: `cold_id[key]` = the table's extra row (its vocab size).

    Args:
        cold_id: id feature -> index of its cold row.
        seen: id feature -> bool [vocab] of the ids that occur in the training rows.
        p: id-dropout probability during training.

    Example::

        cold = ColdIds({"user_id": 943}, {"user_id": seen_ids(train.user_id, 943)}, 0.1)
        batch = cold.train_batch(batch, seed, epoch, step, 1024, rank=0, world_size=1)
        batch = cold.eval_batch(batch)  # unseen ids -> the cold row
    """

    cold_id: dict[str, int]
    seen: dict[str, np.ndarray]
    p: float

    def _ids(self, batch: Batch, key: str) -> torch.Tensor:
        return batch.user_ids if key == "user_id" else batch.item_ids

    def train_batch(
        self, batch: Batch, seed: int, epoch: int, step: int, global_batch: int, rank: int, world_size: int
    ) -> Batch:
        kjt = batch.sparse
        local = global_batch // world_size
        for k, key in enumerate(COLD_KEYS):
            if key in self.cold_id:
                mask = id_dropout_mask(seed, epoch, step, k, global_batch, self.p)[rank * local : (rank + 1) * local]
                kjt = with_cold_ids(kjt, key, torch.from_numpy(mask), self.cold_id[key])
        return replace(batch, sparse=kjt)

    def eval_batch(self, batch: Batch) -> Batch:
        kjt = batch.sparse
        for key in COLD_KEYS:
            if key in self.cold_id:
                unseen = ~torch.from_numpy(self.seen[key])[self._ids(batch, key)]
                kjt = with_cold_ids(kjt, key, unseen, self.cold_id[key])
        return replace(batch, sparse=kjt)


def build_cold_ids(p: float, sparse_names: list[str], vocab: dict[str, int], train_ids: dict[str, np.ndarray]) -> ColdIds | None:
    """The run's cold rows (None when id dropout is off)."""
    if p <= 0:
        return None
    keys = [k for k in COLD_KEYS if k in sparse_names]
    return ColdIds(
        cold_id={k: vocab[k] for k in keys},
        seen={k: seen_ids(train_ids[k], vocab[k]) for k in keys},
        p=p,
    )
