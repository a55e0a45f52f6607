"""The pure parts of the features stage against slow reference loops."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_reviews import same_length_lists

from features.dense import standardize
from features.movielens import split_title
from features.profiles import (
    leave_one_out_profiles,
    mean_profiles,
    positive_sums,
    strictly_earlier_profiles,
)
from features.split import random_split, repeated_pairs, temporal_split
from features.text import item_text
from features.vocab import age_buckets, build_vocab, encode, entity_order, prefixes

rows = same_length_lists(
    st.integers(0, 3),  # users
    st.integers(0, 4),  # items
    st.integers(0, 5),  # timestamps (many ties)
    st.booleans(),  # positive
    st.booleans(),  # in train
)


def item_vectors(seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(5, 3))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float16).astype(np.float32)


@settings(max_examples=60, deadline=None)
@given(rows)
def test_strictly_earlier_profiles_match_loop(data: tuple) -> None:
    users, items, ts, pos, _ = (np.array(x) for x in data)
    vecs = item_vectors()
    got, counts = strictly_earlier_profiles(users, ts, items, pos, vecs)
    for r in range(len(users)):
        earlier = [
            k for k in range(len(users)) if users[k] == users[r] and ts[k] < ts[r] and pos[k]
        ]
        assert counts[r] == len(earlier)
        want = vecs[items[earlier]].astype(np.float64).mean(axis=0) if earlier else np.zeros(3)
        np.testing.assert_allclose(got[r], want, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(rows)
def test_leave_one_out_profiles_match_loop(data: tuple) -> None:
    users, items, _, pos, train = (np.array(x) for x in data)
    vecs = item_vectors()
    own = pos & train
    sums, counts = positive_sums(users, items, own, 4, vecs)
    got = leave_one_out_profiles(users, items, own, sums, counts, vecs)
    for r in range(len(users)):
        others = [k for k in range(len(users)) if users[k] == users[r] and own[k] and k != r]
        want = vecs[items[others]].astype(np.float64).mean(axis=0) if others else np.zeros(3)
        np.testing.assert_allclose(got[r], want, atol=1e-6)
    full = mean_profiles(sums, counts)
    for u in range(4):
        mine = items[(users == u) & own]
        want = vecs[mine].astype(np.float64).mean(axis=0) if len(mine) else np.zeros(3)
        np.testing.assert_allclose(full[u], want, atol=1e-6)


def test_random_split_is_seeded_and_sized() -> None:
    users, items = np.arange(1000) // 40, np.arange(1000) % 40  # distinct pairs
    a = random_split(users, items, [0.8, 0.1, 0.1], seed=5)
    assert np.array_equal(a, random_split(users, items, [0.8, 0.1, 0.1], seed=5))
    assert not np.array_equal(a, random_split(users, items, [0.8, 0.1, 0.1], seed=6))
    assert np.bincount(a).tolist() == [800, 100, 100]


def test_random_split_keeps_repeated_pairs_together() -> None:
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 30, 3000), rng.integers(0, 20, 3000)  # ~600 pairs, most repeat
    codes = random_split(users, items, [0.8, 0.1, 0.1], seed=1)
    for u, i in set(zip(users.tolist(), items.tolist())):
        assert len(set(codes[(users == u) & (items == i)].tolist())) == 1
    shares = np.bincount(codes, minlength=3) / 3000
    assert abs(shares[0] - 0.8) < 0.05 and shares[1] > 0.03 and shares[2] > 0.03
    pairs = set(zip(users.tolist(), items.tolist()))
    assert repeated_pairs(users, items) == {"pairs": sum(
        ((users == u) & (items == i)).sum() > 1 for u, i in pairs), "extra_rows": 3000 - len(pairs)}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 20), min_size=1, max_size=60))
def test_temporal_split_keeps_ties_together(ts: list[int]) -> None:
    t = np.array(ts, dtype=np.int64)
    codes, (cut1, cut2) = temporal_split(t, [0.8, 0.1, 0.1])
    for v in np.unique(t):
        assert len(set(codes[t == v].tolist())) == 1
    assert np.all(t[codes == 0] < cut1) and np.all(t[codes == 2] >= cut2)
    assert np.all((t[codes == 1] >= cut1) & (t[codes == 1] < cut2))


def test_entity_order() -> None:
    perm, kind = entity_order(pa.array(["10", "2", "1", "9"]))
    assert kind == "numeric" and perm.tolist() == [2, 1, 3, 0]
    perm, kind = entity_order(pa.array(["b", "a10", "a9"]))
    assert kind == "lexicographic" and perm.tolist() == [1, 2, 0]


def test_vocab_encode_oov_and_missing() -> None:
    vocab = build_vocab(pa.array(["m", "f", None, "m"]))
    assert vocab.to_pylist() == ["f", "m"]
    assert encode(pa.array(["m", "x", None, "f"]), vocab).tolist() == [2, 0, 0, 1]


def test_age_buckets_and_prefixes() -> None:
    ages = pa.array([7, 17, 18, 24, 25, 34, 35, 44, 45, 49, 50, 55, 56, 73, None])
    assert age_buckets(ages).to_pylist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, None]
    assert prefixes(pa.array(["94043", "T8H1N", None]), 2).to_pylist() == ["94", "T8", None]


def test_standardize() -> None:
    z, mean, std = standardize(
        np.array([1.0, 3.0, np.nan, 100.0]), np.array([True, True, True, False])
    )
    assert (mean, std) == (2.0, 1.0)
    assert z.dtype == np.float32 and z.tolist() == [-1.0, 1.0, 0.0, 98.0]
    z, mean, std = standardize(np.array([5.0, 5.0]), np.array([True, True]))
    assert std == 1.0 and z.tolist() == [0.0, 0.0]


def test_item_text() -> None:
    assert (
        item_text("Toy Story", ["Animation", "Comedy"], 1995)
        == "Toy Story. Genres: Animation, Comedy (1995)"
    )
    assert item_text("Toy Story", [], None) == "Toy Story"
    assert item_text(None, ["Drama"], 1990) == "Genres: Drama (1990)"


@pytest.mark.parametrize(
    ("title", "date", "want"),
    [
        ("Toy Story (1995)", "01-Jan-1995", ("Toy Story", 1995)),
        ("Taxi Driver (1976)", "16-Feb-1996", ("Taxi Driver", 1976)),
        ("Seven (Se7en) (1995)", "01-Jan-1995", ("Seven (Se7en)", 1995)),
        ("Land Before Time III: The Time of the Great Giving (1995) (V)", "01-Jan-1995",
         ("Land Before Time III: The Time of the Great Giving (V)", 1995)),
        ("unknown", None, ("unknown", None)),
        ("Some Film", "05-Mar-1997", ("Some Film", 1997)),
    ],
)  # fmt: skip
def test_split_title(title: str, date: str | None, want: tuple[str, int | None]) -> None:
    assert split_title(title, date) == want
