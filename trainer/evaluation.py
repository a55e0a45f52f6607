"""Exact evaluation of a split in memory independent of its size, on any number of ranks.

Each rank scores its own contiguous rows (`trainer.data.eval_batches`) and appends them
to spill files in the run directory, `.eval-{split}/`, which every rank can read (the
same shared storage as the checkpoints):

    s{b}.r{rank}   uint32 per row: score bucket b's packed (score, label)
                   (`trainer.metrics.pack_scores`; buckets are score ranges)
    u{b}.r{rank}   (user int64, packed uint32) per row: user bucket b, a hash range of
                   users sized to hold about `user_bucket_rows` rows

Then each rank counts a share of the non-empty score buckets (bounded counts each,
`trainer.metrics.count_bucket`) and computes the per-user sums of a share of the user
buckets (whole users: one bucket in memory at a time). Small per-bucket terms are
all-gathered and combined in bucket order, so the numbers are exact, the same on every
rank, and the same for any world size: a user bucket's rows are in row order because
rank r scores rows [r*P, (r+1)*P) in order. Memory per rank: the flush buffer, one
score table and one user bucket, whatever the split's size. With `predictions`, each
rank also writes its rows' probabilities, and rank 0 joins the parts into one Parquet
file in row order, one row group at a time.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn

from trainer.cold_start import ColdIds
from trainer.data import TrainingData, eval_batches
from trainer.distributed import DistEnv, all_gather_objects, all_reduce_sum, barrier
from trainer.metrics import (
    N_SCORE_BUCKETS,
    RANKING_SUMS,
    BucketTerms,
    SplitSummary,
    bucket_of,
    bucket_offsets,
    bucket_terms,
    combine,
    count_bucket,
    pack_scores,
    ranking_means,
    ranking_sums,
)

SCORE_ROW = np.dtype(np.uint32)
USER_ROW = np.dtype([("user", "<i8"), ("packed", "<u4")])
PREDICTION_SCHEMA = pa.schema([("user_id", pa.int64()), ("item_id", pa.int64()), ("label", pa.float32()),
                               ("prob", pa.float32())])  # fmt: skip
READ_ROWS = 1 << 20  # rows of a score bucket file read at a time


@dataclass(frozen=True)
class EvalSpec:
    """What to compute over one split.

    thresholds: count the confusion at these (val's 0.5, test's val-chosen threshold);
    min_recall: the recall floor of `fpr_at_recall`; ks: the K of NDCG@K and Recall@K
    (none: no per-user metrics, no user buckets); predictions: write every row's
    probability there; flush_rows and user_bucket_rows bound memory (tests shrink them).
    """

    split: str
    thresholds: tuple[float, ...] = (0.5,)
    min_recall: float = 0.5
    ks: tuple[int, ...] = (10,)
    predictions: Path | None = None
    flush_rows: int = 1 << 18
    user_bucket_rows: int = 1 << 18


@dataclass
class SplitEval:
    summary: SplitSummary
    ranking: dict[str, float]  # gAUC, NDCG@K, Recall@K (empty without ks)


def user_buckets(n_rows: int, spec: EvalSpec) -> int:
    """How many user buckets: a function of the split's size only, not of the world size."""
    return max(1, -(-n_rows // spec.user_bucket_rows)) if spec.ks else 0


def user_bucket(users: np.ndarray, n_buckets: int) -> np.ndarray:
    """A fixed hash of the user id (Fibonacci hashing), so a user's rows meet in one bucket."""
    h = (users.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(33)
    return (h % np.uint64(n_buckets)).astype(np.int64)


class Spill:
    """One rank's scored rows, appended to the bucket files in bounded batches."""

    def __init__(self, folder: Path, rank: int, n_user_buckets: int, flush_rows: int) -> None:
        self.folder, self.rank = folder, rank
        self.n_user_buckets, self.flush_rows = n_user_buckets, flush_rows
        self.totals = np.zeros((N_SCORE_BUCKETS, 2), np.int64)  # (negatives, positives) a bucket
        self.pending: list[tuple[np.ndarray, np.ndarray]] = []
        self.buffered = 0

    def add(self, users: np.ndarray, packed: np.ndarray) -> None:
        slot = bucket_of(packed).astype(np.int64) * 2 + (packed >> np.uint32(31))
        self.totals += np.bincount(slot, minlength=self.totals.size).reshape(self.totals.shape)
        self.pending.append((users, packed))
        self.buffered += packed.size
        if self.buffered >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        users = np.concatenate([u for u, _ in self.pending])
        packed = np.concatenate([p for _, p in self.pending])
        self.pending, self.buffered = [], 0
        self._append("s", bucket_of(packed).astype(np.int64), packed)
        if self.n_user_buckets:
            rows = np.empty(users.size, USER_ROW)
            rows["user"], rows["packed"] = users, packed
            self._append("u", user_bucket(users, self.n_user_buckets), rows)

    def _append(self, kind: str, buckets: np.ndarray, rows: np.ndarray) -> None:
        order = np.argsort(buckets, kind="stable")  # keeps row order within a bucket
        present, starts = np.unique(buckets[order], return_index=True)
        for b, part in zip(present, np.split(rows[order], starts[1:])):
            with open(spill_path(self.folder, kind, int(b), self.rank), "ab") as f:
                part.tofile(f)


def spill_path(folder: Path, kind: str, bucket: int, rank: int) -> Path:
    return folder / f"{kind}{bucket:06d}.r{rank:05d}"


def read_bucket(folder: Path, kind: str, bucket: int, world_size: int, dtype: np.dtype) -> Iterator[np.ndarray]:
    """A bucket's rows, rank by rank (so in row order), READ_ROWS at a time."""
    for rank in range(world_size):
        path = spill_path(folder, kind, bucket, rank)
        if not path.exists():
            continue
        with open(path, "rb") as f:
            while (chunk := np.fromfile(f, dtype, count=READ_ROWS)).size:
                yield chunk


class PredictionsPart:
    """This rank's rows' probabilities, in row order, beside the final file."""

    def __init__(self, path: Path, rank: int) -> None:
        self.path = part_path(path, rank)
        self.writer = pq.ParquetWriter(self.path, PREDICTION_SCHEMA)

    def write(self, users: np.ndarray, items: np.ndarray, labels: np.ndarray, probs: np.ndarray) -> None:
        arrays = [pa.array(users), pa.array(items), pa.array(labels.astype(np.float32)), pa.array(probs)]
        self.writer.write_table(pa.Table.from_arrays(arrays, schema=PREDICTION_SCHEMA))

    def close(self) -> None:
        self.writer.close()


def part_path(path: Path, rank: int) -> Path:
    return path.with_name(f".{path.name}.part{rank:05d}")


def join_predictions(path: Path, world_size: int) -> None:
    """Rank 0: the parts, in rank order, one row group at a time, into `path` (atomic)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with pq.ParquetWriter(tmp, PREDICTION_SCHEMA) as writer:
        for rank in range(world_size):
            part = pq.ParquetFile(part_path(path, rank))
            for g in range(part.num_row_groups):
                writer.write_table(part.read_row_group(g))
    os.replace(tmp, path)
    for rank in range(world_size):
        part_path(path, rank).unlink()


def score_rows(
    model: nn.Module, data: TrainingData, spec: EvalSpec, batch_size: int, env: DistEnv, spill: Spill,
    cold: ColdIds | None,
) -> None:  # fmt: skip
    """This rank's rows through the model, into the spill (and the predictions part)."""
    preds = PredictionsPart(spec.predictions, env.rank) if spec.predictions else None
    model.eval()
    with torch.no_grad():
        for batch, ids in eval_batches(data, spec.split, batch_size, env.rank, env.world_size):
            keep = ids >= 0  # padding rows are not the split's
            users, labels = batch.user_ids.numpy()[keep], batch.labels.numpy()[keep]
            items = batch.item_ids.numpy()[keep]
            if cold is not None:
                batch = cold.eval_batch(batch)
            _, (_, logits, _, _, _) = model(batch.to(env.device))
            probs = torch.sigmoid(logits.float()).cpu().numpy()[keep]
            try:
                spill.add(users, pack_scores(labels, probs))
            except ValueError as e:
                raise RuntimeError(f"evaluate({spec.split}): the model's {e}") from None
            if preds is not None:
                preds.write(users, items, labels, probs)
    model.train()
    spill.flush()
    if preds is not None:
        preds.close()


def count_buckets(folder: Path, totals: np.ndarray, spec: EvalSpec, env: DistEnv) -> SplitEval:
    """This rank's share of the score and user buckets; every rank gets the whole result."""
    offsets = bucket_offsets(totals, spec.thresholds, spec.min_recall)
    present = np.flatnonzero(totals.sum(1))
    terms = [
        bucket_terms(int(b), count_bucket(int(b), read_bucket(folder, "s", int(b), env.world_size, SCORE_ROW)),
                     offsets[b])
        for b in present[env.rank :: env.world_size]
    ]  # fmt: skip
    sums = {}
    for b in range(env.rank, user_buckets(int(totals.sum()), spec), env.world_size):
        rows = np.concatenate([np.zeros(0, USER_ROW), *read_bucket(folder, "u", b, env.world_size, USER_ROW)])
        packed = rows["packed"]
        scores = (packed & np.uint32(0x7FFFFFFF)).view(np.float32)
        sums[b] = [ranking_sums(rows["user"], packed >> np.uint32(31), scores, k) for k in spec.ks]
    gathered = cast(list[tuple[list[BucketTerms], dict[int, list[np.ndarray]]]], all_gather_objects((terms, sums)))
    summary = combine([t for ts, _ in gathered for t in ts], totals, spec.thresholds)
    every = {b: s for _, part in gathered for b, s in part.items()}
    ranking: dict[str, float] = {}
    for i, k in enumerate(spec.ks):
        total = np.zeros(len(RANKING_SUMS))
        for b in sorted(every):  # bucket order: the same float sums for any world size
            total = total + every[b][i]
        ranking.update(ranking_means(total, k))
    return SplitEval(summary, ranking)


def evaluate(
    model: nn.Module, data: TrainingData, spec: EvalSpec, batch_size: int, env: DistEnv, work: Path,
    cold: ColdIds | None = None,
) -> SplitEval:  # fmt: skip
    """Exact metrics of every row of `spec.split`, the same on every rank; `batch_size`
    is the global eval batch and `work` the (shared) run directory.

    With cold-start ids, ids absent from the training rows are scored with the cold row.
    """
    folder = work / f".eval-{spec.split}"
    if env.is_main:  # a crashed run's leftovers never count
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    barrier()
    n = data.parts[spec.split].n
    spill = Spill(folder, env.rank, user_buckets(n, spec), spec.flush_rows)
    score_rows(model, data, spec, batch_size, env, spill, cold)
    totals = all_reduce_sum(spill.totals)
    if int(totals.sum()) != n:
        raise RuntimeError(f"evaluate({spec.split}): scored {int(totals.sum())} of {n} rows")
    result = count_buckets(folder, totals, spec, env)
    barrier()
    if env.is_main:
        shutil.rmtree(folder)
        if spec.predictions is not None:
            join_predictions(spec.predictions, env.world_size)
    barrier()
    return result
