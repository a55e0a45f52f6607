"""Bucket jobs of the streaming build: the features that need all rows of one owner.

A user bucket holds every row of a contiguous range of users (features/spill.py), in
input order; an item bucket the same for items.  Each job runs the whole-array
functions of features/profiles.py, stats.py and history.py on its bucket alone:
those functions group by owner, so a bucket gives its owners' values exactly as
the whole input would (the other entity's columns, computed on partial rows, are
dropped).  A job writes its outputs to its own files, so jobs can run in any order
and in parallel processes.

Spilled row columns (`SPILL_SCHEMA`): seq, user, item, timestamp, rating, code, fold_hash.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from features import history, profiles, split, stats
from features.examples import users_table, vectors
from features.io import vector_writer
from features.schema import profiles_schema
from features.spill import SEQ, write_results

SPILL_SCHEMA = pa.schema(
    [
        (SEQ, pa.int64()),
        ("user", pa.int64()),
        ("item", pa.int64()),
        ("timestamp", pa.int64()),
        ("rating", pa.float64()),
        ("code", pa.int8()),
        ("fold_hash", pa.uint64()),
    ]
)
PROFILE_USERS = 2048  # users per profile block: [2048, S, 384] float32 is ~19 MB at S = 6


@dataclass(frozen=True)
class OwnerPlan:
    """What the bucket jobs compute (all from the features config, in features/main.py)."""

    temporal: bool
    frozen: bool  # temporal_history: frozen (only training rows are history)
    positive_min_rating: float
    profile_folds: int  # K (random split)
    block_cuts: tuple[int, ...]  # the B - 1 timestamps between profile time blocks (temporal)
    keyed: bool  # write the per-(user, slot) profile table
    stats_folds: int | None  # rating_stats' K, None = off
    bag_folds: int | None  # history_bags' K, None = off
    bag_max_len: int
    ordered: bool = False  # history_scheme: ordered (random split)
    stats_recent: int = 0  # rating_recent's window (temporal), 0 = off
    # rating_bias: ItemBlockSums.earlier_means [I, B] (temporal), None = off
    item_block_means: np.ndarray | None = field(default=None, compare=False)

    @property
    def profile_slots(self) -> int:
        return len(self.block_cuts) + 2 if self.temporal else self.profile_folds + 1

    def profile_slot(
        self, timestamps: np.ndarray, fold_hash: np.ndarray, train: np.ndarray
    ) -> np.ndarray:
        """int64 [n] the slot a row reads (see features/profiles.py)."""
        if self.temporal:
            return np.searchsorted(np.asarray(self.block_cuts, np.int64), timestamps, side="right")
        k = self.profile_folds
        return np.where(train, (fold_hash % np.uint64(k)).astype(np.int64), k)


@dataclass
class Rows:
    """One bucket's rows as arrays."""

    seq: np.ndarray
    user: np.ndarray
    item: np.ndarray
    ts: np.ndarray
    rating: np.ndarray
    label: np.ndarray
    train: np.ndarray
    fold_hash: np.ndarray

    @classmethod
    def of(cls, table: pa.Table, t: float) -> Rows:
        col = {name: table[name].to_numpy() for name in table.column_names}
        return cls(col[SEQ], col["user"], col["item"], col["timestamp"], col["rating"],
                   col["rating"] >= t, col["code"] == split.TRAIN, col["fold_hash"])  # fmt: skip

    def folds(self, k: int) -> np.ndarray:
        return (self.fold_hash % np.uint64(k)).astype(np.int64)


def history_order(rows: Rows, plan: OwnerPlan) -> tuple[bool, np.ndarray, np.ndarray | None]:
    """(strictly-earlier sets?, the order key, the rows the sets may hold) for the rating
    statistics and history bags of `rows`.

    The ordered scheme (CatBoost's ordered target statistics) is the temporal rule over
    a seeded random time: training rows are ordered by their row hash (63 bits, so no
    two of an owner's rows tie in practice) and val/test rows come after all of them,
    reading every training row and never each other.
    """
    if not plan.ordered:
        return plan.temporal, rows.ts, (rows.train if plan.frozen else None)
    last = np.iinfo(np.int64).max
    key = np.where(rows.train, (rows.fold_hash >> np.uint64(1)).astype(np.int64), last)
    return True, key, rows.train


def owner_columns(rows: Rows, plan: OwnerPlan, owner: str) -> dict[str, np.ndarray | pa.Array]:
    """The per-row rating statistics and history bags that `owner` ("user"/"item") owns."""
    earlier, key, readable = history_order(rows, plan)
    out: dict[str, np.ndarray | pa.Array] = {}
    if plan.stats_folds is not None:
        k = plan.stats_folds
        got = stats.rating_stats(
            rows.user, rows.item, rows.rating, rows.label, key, rows.train, earlier,
            rows.folds(k), k, plan.positive_min_rating, readable, plan.stats_recent,
        )  # fmt: skip
        out |= {name: v for name, v in got.items() if name.startswith(owner + "_")}
    if owner == "user" and plan.item_block_means is not None:
        blocks = plan.profile_slot(rows.ts, rows.fold_hash, rows.train)  # temporal: the time block
        read = rows.train if plan.frozen else np.ones(len(rows.ts), bool)
        out[stats.BIAS_FEATURE] = stats.user_bias(
            rows.user, rows.item, rows.rating, rows.ts, read, plan.item_block_means, blocks
        )
    if plan.bag_folds is not None:
        k = plan.bag_folds
        bags = history.history_bags(
            rows.user, rows.item, rows.label, key, rows.train, earlier,
            rows.folds(k), k, plan.bag_max_len, readable,
        )  # fmt: skip
        out |= {n: bags[n] for n, (kind, _, _) in history.HISTORY_FEATURES.items() if kind == owner}
    return out


def _profile_block(rows: Rows, plan: OwnerPlan, lo: int, n: int, vecs: np.ndarray) -> tuple:
    """(profiles [n, S, D] float32, entity means [n, D] float32, counts [n]) of users lo..lo+n."""
    users = rows.user - lo
    entity = rows.train & rows.label
    sums, counts = profiles.positive_sums(users, rows.item, entity, n, vecs)
    means = profiles.mean_profiles(sums, counts)
    if plan.temporal:
        positive = rows.label & rows.train if plan.frozen else rows.label
        slots = plan.profile_slot(rows.ts, rows.fold_hash, rows.train)
        b = len(plan.block_cuts) + 1
        table = profiles.profile_table(users, rows.item, positive, slots, b, n, vecs, earlier=True)
        table = np.concatenate([table, means[:, None]], axis=1)
    else:
        k = plan.profile_folds
        table = profiles.profile_table(
            users, rows.item, entity, rows.folds(k), k, n, vecs, earlier=False
        )
    return table, means, counts


def _select(rows: Rows, idx: np.ndarray) -> Rows:
    return Rows(*(getattr(rows, f)[idx] for f in Rows.__dataclass_fields__))


def user_job(
    table: pa.Table,
    lo: int,
    hi: int,
    plan: OwnerPlan,
    vecs: np.ndarray,
    user_names: list[str],
    out: Path,
    profiles: Path,
) -> dict[str, int]:
    """Profiles, entity rows and owned columns of users lo..hi-1 (`table`: their rows;
    `user_names`: their raw ids).

    Writes `profiles` (the table's rows lo * S ...), `out`-users.parquet (the users
    entity rows) and `out`-rows.parquet (per-row results), and returns the bucket's
    repeated-pair counts.
    """
    rows = Rows.of(table, plan.positive_min_rating)
    s, d = plan.profile_slots, vecs.shape[1]
    order = np.argsort(rows.user, kind="stable")
    starts = np.searchsorted(rows.user[order], np.arange(lo, hi + 1))
    prof_w = vector_writer(profiles, profiles_schema(d), "key") if plan.keyed else None
    user_w = None
    for a in range(lo, hi, PROFILE_USERS):
        b = min(hi, a + PROFILE_USERS)
        block = _select(rows, order[starts[a - lo] : starts[b - lo]])
        table_b, means, counts = _profile_block(block, plan, a, b - a, vecs)
        if prof_w is not None:
            keys = np.arange(a * s, b * s, dtype=np.int64)
            prof_w.write_table(pa.Table.from_arrays([pa.array(keys), vectors(table_b.reshape(-1, d))],
                                                    schema=profiles_schema(d)))  # fmt: skip
        users = users_entity(
            np.arange(a, b), pa.array(user_names[a - lo : b - lo], pa.string()), means, counts
        )
        user_w = user_w or vector_writer(f"{out}-users.parquet", users.schema, "user_id")
        user_w.write_table(users)
    for w in (prof_w, user_w):
        if w is not None:
            w.close()
    cols = owner_columns(rows, plan, "user")
    if cols:
        write_results(Path(f"{out}-rows.parquet"), rows.seq, cols)
    return (
        split.repeated_pairs(rows.user, rows.item)
        if len(rows.seq)
        else {"pairs": 0, "extra_rows": 0}
    )


def item_job(table: pa.Table, plan: OwnerPlan, out: Path) -> None:
    """The item-owned per-row columns of one item bucket -> `out`-rows.parquet."""
    rows = Rows.of(table, plan.positive_min_rating)
    write_results(Path(f"{out}-rows.parquet"), rows.seq, owner_columns(rows, plan, "item"))


def users_entity(
    ids: np.ndarray, names: pa.Array, means: np.ndarray, counts: np.ndarray
) -> pa.Table:
    table = users_table(names, means, counts)
    return table.set_column(0, table.schema.field(0), pa.array(ids.astype(np.int64)))
