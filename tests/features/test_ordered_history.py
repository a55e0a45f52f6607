"""`history_scheme: ordered` (CatBoost's ordered statistics) against a plain-loop reference.

A random-split training row's rating statistics and history bags read its owner's
training rows that come before it in the seeded row-hash order; a val/test row reads all
of its owner's training rows. The reference walks every row and its owner's rows.
"""

from __future__ import annotations

import numpy as np

from features import history
from features.owners import OwnerPlan, Rows, owner_columns

T = 4.0  # positive_min_rating


def _rows(n: int, seed: int) -> Rows:
    rng = np.random.default_rng(seed)
    rating = rng.integers(1, 6, n).astype(np.float64)
    return Rows(
        seq=np.arange(n), user=rng.integers(0, 6, n), item=rng.integers(0, 9, n),
        ts=rng.integers(0, 5, n), rating=rating, label=rating >= T, train=rng.random(n) < 0.7,
        fold_hash=rng.integers(0, 2**63, n, dtype=np.uint64) * np.uint64(2) + np.uint64(1),
    )  # fmt: skip


def _plan(max_len: int) -> OwnerPlan:
    return OwnerPlan(
        temporal=False, frozen=False, positive_min_rating=T, profile_folds=5, block_cuts=(),
        keyed=False, stats_folds=5, bag_folds=5, bag_max_len=max_len, ordered=True,
    )  # fmt: skip


def _read_set(rows: Rows, owner: np.ndarray, r: int) -> np.ndarray:
    """The rows row r reads: its owner's training rows earlier in the hash order."""
    same = (owner == owner[r]) & rows.train
    if rows.train[r]:
        same &= rows.fold_hash < rows.fold_hash[r]
    return np.flatnonzero(same)


def test_ordered_statistics_and_bags_equal_the_loop():
    rows, max_len = _rows(400, seed=3), 4
    for kind, owner, member in (("user", rows.user, rows.item), ("item", rows.item, rows.user)):
        got = owner_columns(rows, _plan(max_len), kind)
        for r in range(len(rows.seq)):
            s = _read_set(rows, owner, r)
            n = len(s)
            assert got[f"{kind}_hist_n"][r] == np.float32(np.log1p(n) / 5)
            want_mean = rows.rating[s].mean() - (T - 0.5) if n else 0.0
            want_pos = rows.label[s].mean() - 0.5 if n else 0.0
            np.testing.assert_allclose(got[f"{kind}_hist_rating"][r], want_mean, rtol=1e-6)
            np.testing.assert_allclose(got[f"{kind}_hist_pos"][r], want_pos, rtol=1e-6)
            for name, (o, _, positive) in history.HISTORY_FEATURES.items():
                if o != kind:
                    continue
                members = s[rows.label[s] == positive]
                # the max_len latest in the order, latest first (ties cannot occur)
                latest = members[np.argsort(rows.fold_hash[members])[::-1]][:max_len]
                assert got[name][r].as_py() == member[latest].tolist(), (name, r)


def test_a_training_row_never_reads_itself_or_a_val_test_row():
    rows = _rows(300, seed=4)
    got = owner_columns(rows, _plan(100), "user")
    own_items = got["user_pos_items"]
    for r in range(len(rows.seq)):
        readable = set(rows.item[rows.train & (rows.user == rows.user[r]) & rows.label].tolist())
        assert set(own_items[r].as_py()) <= readable
    # the first training row of each user in hash order reads nothing
    for u in np.unique(rows.user[rows.train]):
        mine = np.flatnonzero(rows.train & (rows.user == u))
        first = mine[np.argmin(rows.fold_hash[mine])]
        assert got["user_hist_n"][first] == 0 and own_items[first].as_py() == []
