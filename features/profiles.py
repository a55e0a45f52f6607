"""User profile vectors: means of item content vectors, free of the row's own label.

Shapes: N = rows, U = users, I = items, D = content dim, S = slots per user.  All sums
run in float64 and results are float32 (the tables store float16).

A row's profile is a row of a per-(user, slot) table that grows with users, not rows
(`profile_table`; the examples hold only each row's int64 key u * S + slot, and the
trainer looks the vector up like the frozen entity tables; docs/features.md):

- random split, S = K + 1: slot f < K is the mean over the user's TRAINING positives
  outside hash fold f (`stats.row_folds`), read by the user's training rows of fold f;
  slot K is the mean over all of them, read by val/test rows (and = the entity vector);
- temporal split, S = B + 1: slot b < B is the mean over the user's positives (any
  split) in global time blocks before b, read by every row of block b; slot B is the
  entity vector (training positives); `temporal_history: frozen` passes the training
  positives only.

A user with no such positives gets the zero vector.  Neither a row's own rating nor
the labels of its own fold / block reach it, and rows share a profile by fold or
block, never by label: see `leave_one_out_profiles` (the former scheme) for the side
channel this removes.

Why the sums are exact: item vectors are float16 values in [-1, 1] (multiples of
2^-24), so float64 sums of fewer than 2^29 of them lose no bits.  Profiles therefore
do not depend on summation order, and "this row's features did not change" can be
tested bit for bit.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

# Values per float64 temporary block (8M values = 64 MiB), so peak memory stays flat as
# N grows instead of needing N x D x 8 bytes (30 GB for 10M rows at D = 384).
_BLOCK_VALUES = 8 << 20


def positive_sums(
    users: np.ndarray, items: np.ndarray, weight: np.ndarray, n_users: int, item_vecs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-user sums of the item vectors of the rows with weight 1.

    Args:
        users, items: int64 [N] entity indices.
        weight: [N] 0/1 (which rows count: training positives).
        n_users: U.
        item_vecs: [I, D] item content vectors.

    Returns:
        (float64 sums [U, D], int64 counts [U]).
    """
    w = np.asarray(weight, dtype=np.float64)
    m = sp.csr_matrix((w, (users, items)), shape=(n_users, item_vecs.shape[0]))
    sums = np.asarray(m @ item_vecs.astype(np.float64))
    counts = np.bincount(users, weights=w, minlength=n_users).round().astype(np.int64)
    return sums, counts


def leave_one_out_profiles(
    users: np.ndarray,
    items: np.ndarray,
    own: np.ndarray,
    sums: np.ndarray,
    counts: np.ndarray,
    item_vecs: np.ndarray,
) -> np.ndarray:
    """(sum_u - own * v_i) / (count_u - own), or 0 when that count is 0.

    The former random-split profile, kept as the reference of the side-channel test:
    every negative training row of a user shares one profile and each positive gets
    its own, so "a profile unique among the user's rows" recovers training labels.

    Args:
        users, items: int64 [N] entity indices of the rows.
        own: [N] 0/1: 1 where the row itself is in `sums` (a training positive).
        sums, counts: `positive_sums` over the training positives, [U, D] and [U].
        item_vecs: [I, D].

    Returns:
        float32 [N, D].
    """
    n, d = len(users), item_vecs.shape[1]
    out = np.empty((n, d), dtype=np.float32)
    own = np.asarray(own, dtype=np.float64)
    step = max(1, _BLOCK_VALUES // max(d, 1))
    for a in range(0, n, step):
        b = min(n, a + step)
        o = own[a:b]
        num = sums[users[a:b]] - o[:, None] * item_vecs[items[a:b]].astype(np.float64)
        den = counts[users[a:b]] - o
        out[a:b] = np.where(den[:, None] > 0, num / np.maximum(den, 1)[:, None], 0.0)
    return out


def time_runs(
    owner: np.ndarray, timestamps: np.ndarray, tiebreak: tuple[np.ndarray, ...] = ()
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows sorted by (owner, timestamp, *tiebreak), and their runs: the "strictly
    earlier" rule.  `tiebreak` only orders the rows inside an (owner, timestamp) run.

    Returns:
        order int64 [N] (sorted position -> row), and per sorted position the position of
        the first row of its owner run and of its (owner, timestamp) run: the rows a row
        may read are the sorted positions [owner_start, time_start).
    """
    order = np.lexsort((*tiebreak[::-1], timestamps, owner))
    o, t = owner[order], timestamps[order]
    idx = np.arange(len(o))
    new_owner = np.ones(len(o), dtype=bool)
    new_owner[1:] = o[1:] != o[:-1]
    new_time = new_owner.copy()
    new_time[1:] |= t[1:] != t[:-1]
    owner_start = np.maximum.accumulate(np.where(new_owner, idx, 0))
    time_start = np.maximum.accumulate(np.where(new_time, idx, 0))
    return order, owner_start, time_start


def strictly_earlier_profiles(
    users: np.ndarray,
    timestamps: np.ndarray,
    items: np.ndarray,
    positive: np.ndarray,
    item_vecs: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean item vector of each row's user's positives strictly before the row's time.

    Sort rows by (user, timestamp); a row's sum is the cumulative sum of positive
    vectors up to the first row of its (user, timestamp) run, minus the cumulative
    sum at the start of its user's run, so ties with the row's own timestamp (the row
    itself included) are excluded.

    Args:
        users, timestamps, items: int64 [N].
        positive: [N] 0/1 labels.
        item_vecs: [I, D].

    Returns:
        (float32 profiles [N, D], int64 counts [N]: how many positives each averages).
    """
    n, d = len(users), item_vecs.shape[1]
    order, user_start, run_start = time_runs(users, timestamps)
    pos = np.asarray(positive, dtype=np.float64)[order]
    cum_count = np.concatenate([[0.0], np.cumsum(pos)])
    counts_sorted = np.rint(cum_count[run_start] - cum_count[user_start]).astype(np.int64)
    denom = np.maximum(counts_sorted, 1)[:, None]
    has = (counts_sorted > 0)[:, None]

    out = np.empty((n, d), dtype=np.float32)
    sorted_items = items[order]
    step = max(1, _BLOCK_VALUES // max(n, 1))  # a block of dimensions, all rows
    for a in range(0, d, step):
        b = min(d, a + step)
        vals = item_vecs[sorted_items, a:b].astype(np.float64) * pos[:, None]
        cum = np.zeros((n + 1, b - a), dtype=np.float64)
        np.cumsum(vals, axis=0, out=cum[1:])
        block = (cum[run_start] - cum[user_start]) / denom
        out[order, a:b] = np.where(has, block, 0.0)
    counts = np.empty(n, dtype=np.int64)
    counts[order] = counts_sorted
    return out, counts


def mean_profiles(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """sums / counts per user, 0 where the count is 0: float32 [U, D]."""
    den = np.maximum(counts, 1)[:, None]
    return np.where(counts[:, None] > 0, sums / den, 0.0).astype(np.float32)


def time_blocks(timestamps: np.ndarray, n_blocks: int) -> np.ndarray:
    """int64 [N] global time block 0..n_blocks-1 of each row: near-equal shares of all rows.

    Cut-offs are timestamps (never ratings), so equal timestamps share a block and every
    row of a lower block is strictly earlier than every row of a higher one.
    """
    ordered = np.sort(timestamps)
    if not len(ordered):
        return np.zeros(0, dtype=np.int64)
    cuts = ordered[
        [min(round(j * len(ordered) / n_blocks), len(ordered) - 1) for j in range(1, n_blocks)]
    ]
    return np.searchsorted(cuts, timestamps, side="right").astype(np.int64)


def profile_table(
    users: np.ndarray,
    items: np.ndarray,
    positive: np.ndarray,
    slots: np.ndarray,
    n_slots: int,
    n_users: int,
    item_vecs: np.ndarray,
    earlier: bool,
) -> np.ndarray:
    """Per-(user, slot) profiles from per-(user, slot) positive sums: float32 [U, S, D].

    Args:
        users, items: int64 [N]; positive: [N] 0/1, the rows whose item vectors count.
        slots: int64 [N] in [0, n_slots): the hash fold (random) or time block (temporal).
        n_slots: K or B.
        item_vecs: [I, D] (float16 values: every sum below is exact in float64, so
            "total minus own slot" equals "sum of the other slots" bit for bit).
        earlier: slot b reads slots < b (S = n_slots); else slot f < K reads the slots
            != f and one more slot, K, reads all (S = n_slots + 1).
    """
    d = item_vecs.shape[1]
    pos = np.flatnonzero(np.asarray(positive, dtype=bool))
    key = users[pos] * n_slots + slots[pos]
    m = sp.csr_matrix(
        (np.ones(len(pos)), (key, items[pos])), shape=(n_users * n_slots, item_vecs.shape[0])
    )
    counts = np.bincount(key, minlength=n_users * n_slots).reshape(n_users, n_slots)
    vecs = item_vecs.astype(np.float64)
    out = np.zeros((n_users, n_slots + (not earlier), d), dtype=np.float32)
    step = max(1, _BLOCK_VALUES // max((n_slots + 1) * d, 1))  # users per block
    for a in range(0, n_users, step):
        b = min(n_users, a + step)
        s = np.asarray(m[a * n_slots : b * n_slots] @ vecs).reshape(b - a, n_slots, d)
        c = counts[a:b].astype(np.float64)
        if earlier:
            num, den = np.cumsum(s, axis=1) - s, np.cumsum(c, axis=1) - c
        else:
            tot, ctot = s.sum(axis=1, keepdims=True), c.sum(axis=1, keepdims=True)
            num = np.concatenate([tot - s, tot], axis=1)
            den = np.concatenate([ctot - c, ctot], axis=1)
        out[a:b] = np.where(den[..., None] > 0, num / np.maximum(den, 1)[..., None], 0.0)
    return out
