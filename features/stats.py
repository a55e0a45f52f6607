"""Leakage-free rating statistics per user and per item, as dense features (pure).

For each row and each of its two entities (its user, its item) the row reads a set of
other interactions of that entity and gets three dense columns, `{user,item}_hist_n`,
`{user,item}_hist_rating`, `{user,item}_hist_pos`:

    n     = |set|                                  -> hist_n      = log1p(n) / 5
    mean  = mean rating over the set               -> hist_rating = mean - (t - 0.5)
    share = share of label-positive rows in it     -> hist_pos    = share - 0.5

(t = `positive_min_rating`; an empty set gives 0 for the last two, the neutral value,
and hist_n 0 tells the model so.)  The transforms are fixed, not fitted: a z-score with
training statistics would let a row's own rating reach its features through the mean
and std of the other rows' features.

With a window k (`rating_recent`, temporal split only) each entity also gets
`{user,item}_hist_recent`: the mean rating of the set's k newest members minus the mean
over the whole set, the entity's drift (0 when empty).  Users rate in sessions whose
level drifts, and a new user's few ratings are all the model knows of them
(results/quality-movielens-100k-temporal/README.md measures both columns).

`rating_bias` (temporal split only) adds `user_hist_bias`, the user's rating bias net of
what they chose to rate: the mean, over the user's readable strictly earlier rows j, of
r_j - m(i_j, b_j), where m(i, b) is item i's mean readable rating over the global time
blocks before b (`profile_blocks`); rows whose item has no such rating are left out.  A
row at block b reads ratings of blocks < b only, so a rating reaches no row at its own
time or earlier, of any user.  The item means are a per-(item, block) table built in
the streaming pass (`ItemBlockSums`); a per-user table over blocks would be 10^8 x B at
the scale of docs/scale.md, so there is no item-side twin.

Which set a row reads (the same rules as features/summaries.py):

- `random` split: training rows are cut into K folds by a hash of (seed, user, item,
  timestamp), never of the rating.  A training row in fold k reads its entity's training
  rows outside fold k; a val/test row reads all of its entity's training rows.  Val/test
  ratings reach nothing.
- `temporal` split: every row, in any split, reads its entity's interactions with a
  strictly earlier timestamp, in any split: what a serving system knows "now".  Earlier
  val/test interactions ARE inputs of later rows (never a row's own rating, nor one at
  the same timestamp); this is stated wherever results that use it are reported.
  With `temporal_history: frozen` the sets hold training rows only (`readable`), so
  no val/test rating reaches any row.
"""

from __future__ import annotations

import hashlib

import numpy as np

from features.profiles import time_runs

ENTITIES = ("user", "item")
STAT_FEATURES = tuple(f"{e}_hist_{s}" for e in ENTITIES for s in ("n", "rating", "pos"))
RECENT_FEATURES = tuple(f"{e}_hist_recent" for e in ENTITIES)
BIAS_FEATURE = "user_hist_bias"


def stat_features(recent: int, bias: bool = False) -> tuple[str, ...]:
    """The dense columns of the rating statistics: the six, the drift with window
    `recent` (0 = none), then the user's bias."""
    return STAT_FEATURES + (RECENT_FEATURES if recent else ()) + ((BIAS_FEATURE,) if bias else ())


class ItemBlockSums:
    """Per-(item, time block) sums and counts of readable ratings, added chunk by chunk."""

    def __init__(self, n_items: int, block_cuts: np.ndarray) -> None:
        self.cuts = np.asarray(block_cuts, np.int64)
        self.sums = np.zeros((n_items, len(self.cuts) + 1))
        self.counts = np.zeros((n_items, len(self.cuts) + 1), np.int64)

    def block(self, timestamps: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.cuts, timestamps, side="right")

    def add(self, item: np.ndarray, timestamps: np.ndarray, rating: np.ndarray) -> None:
        # over the chunk's own cells: a dense [I, B] bincount per chunk would cost I x B
        cells, at = np.unique(item * self.sums.shape[1] + self.block(timestamps), return_inverse=True)
        self.sums.reshape(-1)[cells] += np.bincount(at, weights=rating, minlength=len(cells))
        self.counts.reshape(-1)[cells] += np.bincount(at, minlength=len(cells))

    def earlier_means(self) -> np.ndarray:
        """float64 [I, B]: item i's mean rating over the blocks before b, NaN when none."""
        # exclusive prefixes summed from zero, never "through b minus b": block b's own
        # ratings then cannot reach m(i, b) even through rounding
        sums, counts = (
            np.concatenate([np.zeros_like(x[:, :1]), np.cumsum(x[:, :-1], axis=1)], axis=1)
            for x in (self.sums, self.counts)
        )
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def user_bias(
    row_user: np.ndarray,
    row_item: np.ndarray,
    rating: np.ndarray,
    timestamps: np.ndarray,
    readable: np.ndarray,
    block_means: np.ndarray,
    block: np.ndarray,
) -> np.ndarray:
    """float32 [N] `user_hist_bias` (module docstring): `block_means` from
    `ItemBlockSums.earlier_means`, `block` int64 [N] each row's time block."""
    expected = block_means[row_item, block]
    use = np.asarray(readable, bool) & ~np.isnan(expected)
    residual = np.where(use, np.asarray(rating, np.float64) - np.nan_to_num(expected), 0.0)
    owner = np.asarray(row_user, np.int64)
    n = np.rint(earlier_sums(owner, timestamps, use.astype(np.float64)))
    s = earlier_sums(owner, timestamps, residual)
    return np.where(n > 0, s / np.maximum(n, 1), 0.0).astype(np.float32)


def fold_hashes(users: list, items: list, timestamps: list, seed: int) -> np.ndarray:
    """uint64 [N] sha256(seed, user, item, timestamp) of each row: its fold for any K is
    this mod K, so a build hashes each row once whatever folds it cuts."""
    return np.asarray(
        [
            int.from_bytes(hashlib.sha256(f"{seed}\0{u}\0{i}\0{t}".encode()).digest()[:8], "little")
            for u, i, t in zip(users, items, timestamps, strict=True)
        ],
        dtype=np.uint64,
    )


def row_folds(
    users: list[str], items: list[str], timestamps: np.ndarray, k: int, seed: int
) -> np.ndarray:
    """int64 [N] fold of each row: sha256(seed, user, item, timestamp) mod k."""
    return (fold_hashes(users, items, timestamps.tolist(), seed) % np.uint64(k)).astype(np.int64)


def out_of_fold_sums(
    owner: np.ndarray,
    values: np.ndarray,
    train: np.ndarray,
    folds: np.ndarray,
    k: int,
    n_owner: int,
) -> np.ndarray:
    """float64 [N] sum of `values` over the owner's training rows outside the row's fold
    (training rows), or over all of the owner's training rows (val/test rows).

    The other folds' sums are added up (never "total minus own fold"), so a row's own
    value does not even reach its result through rounding.
    """
    per_fold = np.bincount(
        owner[train] * k + folds[train], weights=values[train], minlength=n_owner * k
    ).reshape(n_owner, k)
    out = np.zeros(len(owner))
    for j in range(k):
        out += np.where(train & (folds == j), 0.0, per_fold[owner, j])
    return out


def earlier_sums(owner: np.ndarray, timestamps: np.ndarray, values: np.ndarray) -> np.ndarray:
    """float64 [N] sum of `values` over the owner's rows with a strictly earlier timestamp.

    Prefix sums restart at each owner, so a value reaches no other owner's rows and no
    row of its own owner at the same or an earlier timestamp, not even through rounding.
    """
    order, owner_start, time_start = time_runs(owner, timestamps)
    v = values[order]
    n = len(v)
    starts = np.append(np.flatnonzero(owner_start == np.arange(n)), n)
    sorted_out = np.empty(n)
    for a, b in zip(starts[:-1], starts[1:], strict=True):
        prefix = np.concatenate([[0.0], np.cumsum(v[a:b])])
        sorted_out[a:b] = prefix[time_start[a:b] - a]
    out = np.empty(n)
    out[order] = sorted_out
    return out


def earlier_window_sums(
    owner: np.ndarray,
    other: np.ndarray,
    timestamps: np.ndarray,
    values: np.ndarray,
    readable: np.ndarray,
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """float64 [N] sums and int64 [N] counts of `values` over the owner's k newest readable
    rows with a strictly earlier timestamp.

    Newest means the latest timestamp; among rows at one timestamp, the larger `other`
    id (the rule of the history bags), then the larger value, so the window never
    depends on input order.
    Prefix sums restart at each owner, as in `earlier_sums`.
    """
    order, owner_start, time_start = time_runs(owner, timestamps, (other, values))
    keep = np.asarray(readable, dtype=bool)[order]
    before = np.cumsum(keep) - keep  # readable rows at sorted positions < p
    v = np.asarray(values, dtype=np.float64)[order]
    n = len(v)
    end = before[time_start] - before[owner_start]  # readable rows the row may read
    begin = np.maximum(end - k, 0)
    sorted_sums = np.empty(n)
    starts = np.append(np.flatnonzero(owner_start == np.arange(n)), n)
    for a, b in zip(starts[:-1], starts[1:], strict=True):
        prefix = np.concatenate([[0.0], np.cumsum(v[a:b][keep[a:b]])])
        sorted_sums[a:b] = prefix[end[a:b]] - prefix[begin[a:b]]
    sums, counts = np.empty(n), np.empty(n, dtype=np.int64)
    sums[order], counts[order] = sorted_sums, end - begin
    return sums, counts


def rating_stats(
    row_user: np.ndarray,
    row_item: np.ndarray,
    rating: np.ndarray,
    label: np.ndarray,
    timestamps: np.ndarray,
    train: np.ndarray,
    temporal: bool,
    folds: np.ndarray,
    k: int,
    positive_min_rating: float,
    readable: np.ndarray | None = None,
    recent: int = 0,
) -> dict[str, np.ndarray]:
    """The `stat_features(recent)` columns, float32 [N] each (see the module docstring).

    Args:
        row_user, row_item: int64 [N] entity indices.
        rating: float [N]; label: bool [N]; timestamps: int64 [N]; train: bool [N].
        temporal: strictly-earlier sets (any split) instead of out-of-fold training sets.
        folds: int64 [N] from `row_folds` (ignored when temporal); k: number of folds.
        positive_min_rating: the label threshold t.
        readable: bool [N], the rows the temporal sets may hold (frozen history: the
            training rows); None = all.
        recent: the window k of `{user,item}_hist_recent` (temporal only); 0 = off.
    """
    if recent and not temporal:
        raise ValueError("rating_stats: a recent window needs the temporal sets")
    window_rows = np.ones(len(rating), bool) if readable is None else np.asarray(readable, bool)
    rating = np.asarray(rating, dtype=np.float64)
    label = np.asarray(label, dtype=np.float64)
    ones = np.ones(len(rating))
    if temporal and readable is not None:  # unreadable rows add exact zeros to every sum
        keep = np.asarray(readable, dtype=bool)
        rating, label, ones = (
            np.where(keep, rating, 0.0),
            np.where(keep, label, 0.0),
            keep.astype(np.float64),
        )
    out: dict[str, np.ndarray] = {}
    for name, owner in (("user", row_user), ("item", row_item)):
        owner = np.asarray(owner, dtype=np.int64)
        if temporal:
            n, s, p = (earlier_sums(owner, timestamps, v) for v in (ones, rating, label))
        else:
            size = int(owner.max(initial=-1)) + 1
            n, s, p = (
                out_of_fold_sums(owner, v, train, folds, k, size) for v in (ones, rating, label)
            )
        n = np.rint(n)
        has = n > 0
        safe = np.where(has, n, 1.0)
        out[f"{name}_hist_n"] = (np.log1p(n) / 5.0).astype(np.float32)
        out[f"{name}_hist_rating"] = np.where(
            has, s / safe - (positive_min_rating - 0.5), 0.0
        ).astype(np.float32)
        out[f"{name}_hist_pos"] = np.where(has, p / safe - 0.5, 0.0).astype(np.float32)
        if recent:
            other = np.asarray(row_item if name == "user" else row_user, dtype=np.int64)
            ws, wn = earlier_window_sums(owner, other, timestamps, rating, window_rows, recent)
            drift = ws / np.maximum(wn, 1) - s / safe
            out[f"{name}_hist_recent"] = np.where(wn > 0, drift, 0.0).astype(np.float32)
    return out
