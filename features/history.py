"""Leakage-free interaction histories as multi-valued sparse features (pure).

Four bags per row, each a list of the ids of an id feature (`_meta.json`
`sparse_features[name].ids_of`):

    user_pos_items   items the row's user rated positive     (ids_of item_id)
    user_neg_items   items the row's user rated negative     (ids_of item_id)
    item_pos_users   users who rated the row's item positive (ids_of user_id)
    item_neg_users   users who rated the row's item negative (ids_of user_id)

Mean-pooled (over tables of their own, or over the id feature's table with the
trainer's `history_tables: shared`) they give the model an item-to-item (and
user-to-user) collaborative signal in the id space, the way FISM/SVD++ add implicit
feedback to a factor model.  Which interactions a row may read are the rules of features/stats.py:

- `random` split: training rows are cut into K hash folds (`stats.row_folds`).  A
  training row in fold k reads its owner's training rows outside fold k; a val/test row
  reads all of its owner's training rows.  Val/test interactions reach nothing, and a
  training row's own interaction (and so its label) cannot reach its bags, not even
  through their length.
- `temporal` split: every row reads its owner's interactions with a strictly earlier
  timestamp, in any split (what a serving system knows "now"); with
  `temporal_history: frozen`, its training interactions only (`readable`).

A bag keeps the owner's `max_len` most recent members (ties: the larger member id
first), newest first.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from features.profiles import time_runs

# name: (owner entity, member entity, label the members had)
HISTORY_FEATURES: dict[str, tuple[str, str, bool]] = {
    "user_pos_items": ("user", "item", True),
    "user_neg_items": ("user", "item", False),
    "item_pos_users": ("item", "user", True),
    "item_neg_users": ("item", "user", False),
}


def _newest_first(owner: np.ndarray, timestamps: np.ndarray, member: np.ndarray) -> np.ndarray:
    """Row order by (owner, timestamp descending, member descending)."""
    return np.lexsort((-member, -timestamps, owner))


def _take_lists(
    starts: np.ndarray, lengths: np.ndarray, values: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(offsets [N+1], values) of the N lists values[starts[r] : starts[r] + lengths[r]]."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    idx = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1], dtype=np.int64)
    return offsets, values[idx]


def out_of_fold_bags(
    owner: np.ndarray,
    member: np.ndarray,
    timestamps: np.ndarray,
    eligible: np.ndarray,
    train: np.ndarray,
    folds: np.ndarray,
    k: int,
    max_len: int,
) -> tuple[np.ndarray, np.ndarray]:
    """CSR (offsets [N+1], member ids) of each row's bag on the random split.

    `eligible` marks the rows that may be members (training rows with the bag's label);
    a training row in fold f reads the eligible rows of its owner outside fold f, any
    other row all of its owner's eligible rows.
    """
    n_owner = int(owner.max(initial=-1)) + 1
    # One sorted list per (variant, owner): variant f < k leaves fold f out, k keeps all.
    lists, starts_of, counts_of = [], [], []
    base = 0
    for v in range(k + 1):
        keep = eligible if v == k else eligible & (folds != v)
        rows = np.flatnonzero(keep)
        rows = rows[_newest_first(owner[rows], timestamps[rows], member[rows])]
        o = owner[rows]
        counts = np.bincount(o, minlength=n_owner)
        first = np.zeros(n_owner, dtype=np.int64)
        np.cumsum(counts[:-1], out=first[1:])
        lists.append(member[rows])
        starts_of.append(base + first)
        counts_of.append(counts)
        base += len(rows)
    values = np.concatenate(lists) if lists else np.zeros(0, np.int64)
    variant = np.where(train, folds, k)
    starts = np.stack(starts_of)[variant, owner]
    lengths = np.minimum(np.stack(counts_of)[variant, owner], max_len)
    return _take_lists(starts, lengths, values)


def earlier_bags(
    owner: np.ndarray,
    member: np.ndarray,
    timestamps: np.ndarray,
    eligible: np.ndarray,
    max_len: int,
) -> tuple[np.ndarray, np.ndarray]:
    """CSR of each row's bag on the temporal split: its owner's eligible rows with a
    strictly earlier timestamp (any split), the `max_len` newest."""
    order, owner_start, time_start = time_runs(owner, timestamps)
    # Within an (owner, timestamp) run the members go newest-last by member id, so that
    # reversed slices give "larger member id first" among ties, as out_of_fold_bags does.
    order = order[np.lexsort((member[order], timestamps[order], owner[order]))]
    el = eligible[order]
    # c[p] = eligible rows among sorted positions [0, p)
    c = np.zeros(len(order) + 1, dtype=np.int64)
    np.cumsum(el, out=c[1:])
    eligible_pos = np.flatnonzero(el)
    hi = c[time_start]  # eligible rows before the row's (owner, timestamp) run
    lo = np.maximum(c[owner_start], hi - max_len)
    lengths = hi - lo
    # newest first: walk each slice of eligible positions backwards
    offsets = np.zeros(len(order) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    back = np.repeat(hi - 1 + offsets[:-1], lengths) - np.arange(offsets[-1], dtype=np.int64)
    sorted_values = member[order][eligible_pos[back]]
    # back to row order
    row_lengths = np.empty_like(lengths)
    row_lengths[order] = lengths
    row_starts = np.empty_like(lengths)
    row_starts[order] = offsets[:-1]
    return _take_lists(row_starts, row_lengths, sorted_values)


def history_bags(
    row_user: np.ndarray,
    row_item: np.ndarray,
    label: np.ndarray,
    timestamps: np.ndarray,
    train: np.ndarray,
    temporal: bool,
    folds: np.ndarray,
    k: int,
    max_len: int,
    readable: np.ndarray | None = None,
) -> dict[str, pa.ListArray]:
    """The HISTORY_FEATURES, each a list<int64> array [N] (see the module docstring).

    Args:
        row_user, row_item: int64 [N] entity indices; label: bool [N];
        timestamps: int64 [N]; train: bool [N].
        temporal: strictly-earlier sets (any split) instead of out-of-fold training sets.
        folds: int64 [N] from `stats.row_folds` (ignored when temporal); k: folds.
        max_len: the most members a bag keeps (the newest).
        readable: bool [N], the rows temporal bags may list (frozen history: the
            training rows); None = all.
    """
    ids = {"user": np.asarray(row_user, np.int64), "item": np.asarray(row_item, np.int64)}
    label = np.asarray(label, dtype=bool)
    ts = np.asarray(timestamps, np.int64)
    out: dict[str, pa.ListArray] = {}
    for name, (owner_kind, member_kind, positive) in HISTORY_FEATURES.items():
        owner, member = ids[owner_kind], ids[member_kind]
        wanted = label == positive
        if temporal:
            eligible = wanted if readable is None else wanted & np.asarray(readable, dtype=bool)
            offsets, values = earlier_bags(owner, member, ts, eligible, max_len)
        else:
            offsets, values = out_of_fold_bags(
                owner, member, ts, wanted & train, train, folds, k, max_len
            )
        out[name] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.int64()))
    return out
