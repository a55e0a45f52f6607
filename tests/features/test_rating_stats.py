"""features/stats.py: the rating statistics against a slow loop, and their leakage rules.

The perturbation tests build the tiny dataset twice through `dlrrec features build`
with `rating_stats: true`, the second time with one training row's rating flipped, and
compare every column of every row bit for bit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_features_leakage import flip_a_training_rating
from tiny_reviews import fails, same_length_lists

from features.stats import (
    RECENT_FEATURES,
    STAT_FEATURES,
    earlier_sums,
    out_of_fold_sums,
    rating_stats,
    row_folds,
    stat_features,
)

rows = same_length_lists(
    st.integers(0, 3),  # users
    st.integers(0, 4),  # items
    st.integers(0, 5),  # timestamps (many ties)
    st.integers(1, 5),  # ratings
    st.booleans(),  # in train
    st.integers(0, 2),  # folds (k = 3)
)


def reference(user, item, ts, rating, train, folds, temporal, t=4.0) -> dict[str, list[float]]:
    """One row at a time: the set it may read, then n, mean rating and positive share."""
    out: dict[str, list[float]] = {name: [] for name in STAT_FEATURES}
    for r in range(len(user)):
        for name, owner in (("user", user), ("item", item)):
            if temporal:
                read = [s for s in range(len(user)) if owner[s] == owner[r] and ts[s] < ts[r]]
            else:
                read = [
                    s
                    for s in range(len(user))
                    if owner[s] == owner[r] and train[s] and not (train[r] and folds[s] == folds[r])
                ]
            ratings = [rating[s] for s in read]
            n = len(read)
            out[f"{name}_hist_n"].append(np.log1p(n) / 5.0)
            out[f"{name}_hist_rating"].append(np.mean(ratings) - (t - 0.5) if n else 0.0)
            out[f"{name}_hist_pos"].append(np.mean([x >= t for x in ratings]) - 0.5 if n else 0.0)
    return out


@pytest.mark.parametrize("temporal", [False, True])
@settings(max_examples=60, deadline=None)
@given(rows)
def test_rating_stats_match_a_loop(temporal: bool, data: tuple) -> None:
    user, item, ts, rating, train, folds = (np.asarray(x) for x in data)
    train = train.astype(bool)
    got = rating_stats(user, item, rating, rating >= 4, ts, train, temporal, folds, 3, 4.0)
    want = reference(user, item, ts, rating, train, folds, temporal)
    assert set(got) == set(STAT_FEATURES)
    for name in STAT_FEATURES:
        assert got[name].dtype == np.float32
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-6, err_msg=name)


def test_sums_never_see_the_rows_own_value_even_through_rounding() -> None:
    """Fractional values whose float sums round: own value changed -> own sum bit-identical."""
    rng = np.random.default_rng(0)
    n = 500
    owner, ts = rng.integers(0, 7, n), rng.integers(0, 50, n)
    train, folds = rng.random(n) < 0.8, rng.integers(0, 5, n)
    v = rng.random(n) * 1e3
    r = int(np.nonzero(train)[0][0])
    w = v.copy()
    w[r] = 1e-7
    assert (
        out_of_fold_sums(owner, v, train, folds, 5, 7)[r]
        == out_of_fold_sums(owner, w, train, folds, 5, 7)[r]
    )
    not_later = ~((owner == owner[r]) & (ts > ts[r]))
    assert np.array_equal(
        earlier_sums(owner, ts, v)[not_later], earlier_sums(owner, ts, w)[not_later]
    )


def test_row_folds_depend_on_identity_only() -> None:
    a = row_folds(["u1", "u2", "u1"], ["i1", "i1", "i2"], np.array([5, 5, 6]), 5, 0)
    assert (
        a.tolist()
        == row_folds(["u1", "u2", "u1"], ["i1", "i1", "i2"], np.array([5, 5, 6]), 5, 0).tolist()
    )
    assert ((a >= 0) & (a < 5)).all()
    spread = row_folds([f"u{j}" for j in range(200)], ["i"] * 200, np.zeros(200, np.int64), 5, 0)
    assert np.bincount(spread, minlength=5).min() > 20  # the hash spreads rows over folds


def recent_reference(user, item, ts, rating, readable, k) -> dict[str, list[float]]:
    """One row at a time: the owner's readable strictly earlier rows, newest first (ties:
    the larger other id, then rating, first), the first k of them; their mean minus the
    mean of all."""
    out: dict[str, list[float]] = {name: [] for name in RECENT_FEATURES}
    for r in range(len(user)):
        for name, owner, other in (("user", user, item), ("item", item, user)):
            read = [
                s
                for s in range(len(user))
                if owner[s] == owner[r] and ts[s] < ts[r] and readable[s]
            ]
            newest = sorted(read, key=lambda s: (ts[s], other[s], rating[s]), reverse=True)[:k]
            mean = [np.mean([rating[s] for s in sub]) for sub in (newest, read) if sub]
            out[f"{name}_hist_recent"].append(mean[0] - mean[1] if read else 0.0)
    return out


@pytest.mark.parametrize("frozen", [False, True])
@settings(max_examples=60, deadline=None)
@given(rows, st.integers(1, 4))
def test_recent_drift_matches_a_loop(frozen: bool, data: tuple, k: int) -> None:
    user, item, ts, rating, train, folds = (np.asarray(x) for x in data)
    readable = train.astype(bool) if frozen else np.ones(len(user), bool)
    got = rating_stats(user, item, rating, rating >= 4, ts, train.astype(bool), True, folds, 3,
                       4.0, readable if frozen else None, recent=k)  # fmt: skip
    assert set(got) == set(stat_features(k))
    want = recent_reference(user, item, ts, rating, readable, k)
    for name in RECENT_FEATURES:
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-5, err_msg=name)


def test_recent_window_ignores_input_order() -> None:
    """Rows tied at one timestamp: the window keeps the larger other ids, in any order."""
    user = np.zeros(4, np.int64)
    item, ts = np.array([3, 1, 2, 0]), np.array([0, 0, 0, 1])
    rating = np.array([5.0, 1.0, 4.0, 3.0])
    perm = np.array([2, 0, 3, 1])
    a = rating_stats(user, item, rating, rating >= 4, ts, np.ones(4, bool), True,
                     np.zeros(4, np.int64), 2, 4.0, recent=2)  # fmt: skip
    b = rating_stats(user, item[perm], rating[perm], rating[perm] >= 4, ts[perm],
                     np.ones(4, bool), True, np.zeros(4, np.int64), 2, 4.0, recent=2)  # fmt: skip
    # the last row reads items 3, 2 (ratings 5, 4) of its three tied earlier rows
    assert a["user_hist_recent"][3] == pytest.approx(4.5 - 10 / 3)
    assert b["user_hist_recent"][2] == a["user_hist_recent"][3]


@pytest.fixture(scope="module")
def built_stats(build: Any, tiny_raw: Path) -> dict[str, dict[str, Any]]:
    return {
        "random": build(tiny_raw, split="random", seed=3, rating_stats=True, rating_stats_folds=3),
        "temporal": build(tiny_raw, split="temporal", rating_stats=True, rating_recent=2),
    }


def test_stats_columns_are_dense_features(built_stats: dict[str, dict[str, Any]]) -> None:
    for split, out in built_stats.items():
        names = stat_features(2 if split == "temporal" else 0)
        assert out["meta"]["dense_features"][-len(names) :] == list(names)
        for split in ("train", "val", "test"):
            for name in names:
                col = out[split][name].to_numpy()
                assert col.dtype == np.float32 and np.isfinite(col).all()
        assert np.any(out["train"]["user_hist_n"].to_numpy() > 0)


@pytest.mark.parametrize("split", ["random", "temporal"])
@pytest.mark.parametrize("was_positive", [True, False])
def test_own_rating_never_reaches_own_stats(
    split: str,
    was_positive: bool,
    build: Any,
    built_stats: dict[str, dict[str, Any]],
    tiny_tables: dict[str, pa.Table],
    tmp_path: Path,
) -> None:
    """Flip a training row's rating: its own row (and, temporal, every row of the same
    user or item at the same or an earlier time) keeps every column bit-identical;
    rows that may read it change, so the test can fail."""
    config: dict[str, Any] = {"split": split, "rating_stats": True}
    config.update({"seed": 3, "rating_stats_folds": 3} if split == "random" else {"rating_recent": 2})
    flip_a_training_rating(
        build, built_stats[split], tiny_tables, split, was_positive, tmp_path, config
    )


def test_rating_stats_folds_below_two_exits_2(
    tiny_raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = fails(
        [f"run_dir={tmp_path}", f"features.raw_dir={tiny_raw}", "features.rating_stats_folds=1"],
        capsys,
    )
    assert "features.rating_stats_folds" in err


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (["features.rating_stats=true", "features.split=temporal", "features.rating_recent=-1"],
         ">= 0"),
        (["features.rating_stats=true", "features.rating_recent=5"], "split: temporal"),
        (["features.split=temporal", "features.rating_recent=5"], "rating_stats: true"),
    ],
)  # fmt: skip
def test_rating_recent_needs_temporal_stats_exits_2(
    overrides: list[str], says: str, tiny_raw: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    err = fails([f"run_dir={tmp_path}", f"features.raw_dir={tiny_raw}", *overrides], capsys)
    assert "features.rating_recent" in err and says in err
