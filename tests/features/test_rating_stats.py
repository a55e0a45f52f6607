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
from test_features_leakage import (
    by_pair,
    flip_a_training_rating,
    rebuild_with_own_review,
    same_features,
)
from tiny_reviews import fails, same_length_lists

from features.stats import (
    BIAS_FEATURE,
    RECENT_FEATURES,
    STAT_FEATURES,
    ItemBlockSums,
    earlier_sums,
    out_of_fold_sums,
    rating_stats,
    row_folds,
    stat_features,
    user_bias,
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


def bias_reference(user, item, ts, rating, readable, cuts) -> list[float]:
    """One row at a time: m(i, b) as a loop over the readable rows of item i in blocks
    before b, then the mean of r_j - m(i_j, b_j) over the user's earlier readable rows j."""
    block = [sum(t >= c for c in cuts) for t in ts]

    def m(i: int, b: int) -> float | None:
        got = [rating[s] for s in range(len(ts)) if item[s] == i and block[s] < b and readable[s]]
        return float(np.mean(got)) if got else None

    out = []
    for r in range(len(ts)):
        res = [rating[j] - m(item[j], block[j]) for j in range(len(ts))
               if user[j] == user[r] and ts[j] < ts[r] and readable[j]
               and m(item[j], block[j]) is not None]  # fmt: skip
        out.append(float(np.mean(res)) if res else 0.0)
    return out


@pytest.mark.parametrize("frozen", [False, True])
@settings(max_examples=60, deadline=None)
@given(rows, st.lists(st.integers(0, 5), max_size=3), st.integers(1, 4))
def test_user_bias_matches_a_loop(frozen: bool, data: tuple, cuts: list[int], chunk: int) -> None:
    user, item, ts, rating, train, _ = (np.asarray(x) for x in data)
    readable = train.astype(bool) if frozen else np.ones(len(user), bool)
    sums = ItemBlockSums(5, np.asarray(sorted(cuts), np.int64))
    for a in range(0, len(ts), chunk):  # chunk by chunk, as the streaming pass adds them
        keep = readable[a : a + chunk]
        sums.add(item[a : a + chunk][keep], ts[a : a + chunk][keep], rating[a : a + chunk][keep])
    got = user_bias(user, item, rating, ts, readable, sums.earlier_means(), sums.block(ts))
    assert got.dtype == np.float32
    want = bias_reference(user, item, ts, rating, readable, sorted(cuts))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_block_means_never_see_their_own_block_even_through_rounding() -> None:
    """Fractional ratings whose float sums round: change a block-1 rating -> the means of
    blocks 0 and 1 stay bit-identical (an inclusive prefix minus the block would not)."""
    rng = np.random.default_rng(0)
    item, ts = rng.integers(0, 3, 300), rng.integers(0, 30, 300)
    rating = rng.random(300) * 1e3
    a, b = ItemBlockSums(3, np.array([10, 20])), ItemBlockSums(3, np.array([10, 20]))
    changed = rating.copy()
    changed[(ts >= 10) & (ts < 20)] += 1e-3
    a.add(item, ts, rating)
    b.add(item, ts, changed)
    assert np.array_equal(a.earlier_means()[:, :2], b.earlier_means()[:, :2], equal_nan=True)
    assert not np.array_equal(a.earlier_means()[:, 2], b.earlier_means()[:, 2])


def test_a_rating_reaches_no_bias_at_its_time_or_earlier(
    build: Any, tiny_raw: Path, tiny_tables: dict[str, pa.Table], tmp_path: Path
) -> None:
    """Flip a training rating: every row at its time or earlier, of any user, keeps every
    column bit for bit; a later row of another user changes (its item's block mean moved)."""
    config = {"split": "temporal", "rating_stats": True, "rating_bias": True, "profile_blocks": 4}
    base = build(tiny_raw, **config)
    assert base["meta"]["dense_features"][-1] == BIAS_FEATURE
    rows = by_pair(base)
    key = next(k for k, r in rows.items() if r["split"] == "train" and r[BIAS_FEATURE] == 0.0
               and any(s[BIAS_FEATURE] != 0.0 and s["user_id"] != k[0] and s["item_id"] != k[1]
                       and s["timestamp"] > r["timestamp"] for s in rows.values()))  # fmt: skip
    after = rebuild_with_own_review(build, base, tiny_tables, key, rows[key]["label"] == 1.0,
                                    tmp_path, config)  # fmt: skip
    t0 = rows[key]["timestamp"]
    early = [k for k, r in rows.items() if r["timestamp"] <= t0 and k != key]
    assert early and all(same_features(rows[k], after[k]) for k in early + [key])
    assert any(rows[k][BIAS_FEATURE] != after[k][BIAS_FEATURE] for k in rows
               if k[0] != key[0] and k[1] != key[1])  # fmt: skip


@pytest.fixture(scope="module")
def built_stats(build: Any, tiny_raw: Path) -> dict[str, dict[str, Any]]:
    return {
        "random": build(tiny_raw, split="random", seed=3, rating_stats=True, rating_stats_folds=3),
        "temporal": build(tiny_raw, split="temporal", rating_stats=True, rating_recent=2),
    }


def test_stats_columns_are_dense_features(built_stats: dict[str, dict[str, Any]]) -> None:
    for split, out in built_stats.items():
        names = stat_features(2) if split == "temporal" else STAT_FEATURES
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
        (["features.rating_stats=true", "features.rating_bias=true"], "split: temporal"),
    ],
)  # fmt: skip
def test_rating_recent_needs_temporal_stats_exits_2(
    overrides: list[str], says: str, tiny_raw: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    err = fails([f"run_dir={tmp_path}", f"features.raw_dir={tiny_raw}", *overrides], capsys)
    assert ("features.rating_recent" in err or "features.rating_bias" in err) and says in err


def test_serving_reads_the_drift_and_bias_of_a_row_after_every_interaction(
    build: Any, tiny_raw: Path
) -> None:
    """serve/recipe.py's per-user values are the loops' values for one more row per user,
    later than every interaction (all splits: the causal protocol)."""
    from serve.recipe import derived_values

    out = build(tiny_raw, split="temporal", rating_stats=True, rating_recent=2, rating_bias=True,
                profile_blocks=4)  # fmt: skip
    assert out["meta"]["dense_features"][-3:] == list(RECENT_FEATURES) + [BIAS_FEATURE]
    features = out["run_dir"] / "features"
    names = ["user_hist_recent", BIAS_FEATURE]
    got = derived_values(features, out["meta"], names)
    t = pa.concat_tables([out[s].select(["user_id", "item_id", "timestamp", "rating"])
                          for s in ("train", "val", "test")])  # fmt: skip
    nu = out["meta"]["n_users"]
    user = np.concatenate([t["user_id"].to_numpy(), np.arange(nu)])
    item = np.concatenate([t["item_id"].to_numpy(), np.zeros(nu, np.int64)])
    ts = np.concatenate([t["timestamp"].to_numpy(), np.full(nu, t["timestamp"].to_numpy().max() + 1)])
    rating = np.concatenate([t["rating"].to_numpy(), np.zeros(nu)])
    readable = np.ones(len(ts), bool)
    recent = recent_reference(user, item, ts, rating, readable, 2)["user_hist_recent"][-nu:]
    bias = bias_reference(user, item, ts, rating, readable, out["meta"]["block_cuts"])[-nu:]
    assert len(out["meta"]["block_cuts"]) == 3 and np.any(np.asarray(bias) != 0)
    np.testing.assert_allclose(got["user_hist_recent"][0], recent, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got[BIAS_FEATURE][0], bias, rtol=0, atol=1e-5)
