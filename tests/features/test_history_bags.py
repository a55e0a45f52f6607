"""features/history.py: the history bags against a slow loop, and their leakage rules.

The perturbation tests build the tiny dataset twice through `dlrrec features build`
with `history_bags: true`, the second time with one training row's rating flipped, and
compare every column of every row (the bags included) exactly.
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

from features.history import HISTORY_FEATURES, history_bags

rows = st.tuples(
    same_length_lists(
        st.integers(0, 3),  # users
        st.integers(0, 4),  # items
        st.integers(0, 5),  # timestamps (many ties)
        st.booleans(),  # label
        st.booleans(),  # in train
        st.integers(0, 2),  # folds (k = 3)
    ),
    st.integers(1, 6),  # max_len
)


def reference(user, item, ts, label, train, folds, temporal, max_len) -> dict[str, list[list[int]]]:
    """One row at a time: the rows it may read, newest first (ties: larger member first)."""
    ids = {"user": user, "item": item}
    out: dict[str, list[list[int]]] = {name: [] for name in HISTORY_FEATURES}
    for r in range(len(user)):
        for name, (owner_kind, member_kind, positive) in HISTORY_FEATURES.items():
            owner, member = ids[owner_kind], ids[member_kind]
            read = []
            for s in range(len(user)):
                if owner[s] != owner[r] or bool(label[s]) != positive:
                    continue
                if temporal:
                    ok = ts[s] < ts[r]
                else:
                    ok = bool(train[s]) and not (train[r] and folds[s] == folds[r])
                if ok:
                    read.append((int(ts[s]), int(member[s])))
            read.sort(reverse=True)
            out[name].append([m for _, m in read[:max_len]])
    return out


@pytest.mark.parametrize("temporal", [False, True])
@settings(max_examples=80, deadline=None)
@given(rows)
def test_history_bags_match_a_loop(temporal: bool, data: tuple) -> None:
    cols, max_len = data
    user, item, ts, label, train, folds = (np.asarray(x) for x in cols)
    label, train = label.astype(bool), train.astype(bool)
    got = history_bags(user, item, label, ts, train, temporal, folds, 3, max_len)
    want = reference(user, item, ts, label, train, folds, temporal, max_len)
    assert set(got) == set(HISTORY_FEATURES)
    for name in HISTORY_FEATURES:
        assert got[name].type == pa.list_(pa.int64())
        assert got[name].to_pylist() == want[name], name


def test_a_hand_computed_case() -> None:
    # user 0: train rows (item 1, t 1, +, fold 0), (item 2, t 2, -, fold 1), (item 3, t 3,
    # +, fold 1), a val row (item 4, t 0, +); user 1 a train row (item 1, t 5, +, fold 1).
    user = np.array([0, 0, 0, 0, 1])
    item = np.array([1, 2, 3, 4, 1])
    ts = np.array([1, 2, 3, 0, 5])
    label = np.array([True, False, True, True, True])
    train = np.array([True, True, True, False, True])
    folds = np.array([0, 1, 1, 0, 1])
    got = {
        k: v.to_pylist()
        for k, v in history_bags(user, item, label, ts, train, False, folds, 2, 10).items()
    }
    assert got["user_pos_items"] == [[3], [1], [1], [3, 1], []]
    assert got["user_neg_items"] == [[2], [], [], [2], []]
    # item 1: (user 0, fold 0) and (user 1, fold 1) read each other
    assert got["item_pos_users"] == [[1], [], [], [], [0]]
    temporal = history_bags(user, item, label, ts, train, True, folds, 2, 1)
    # newest first, capped at 1; the val row at t 0 is read by every later row of user 0
    assert temporal["user_pos_items"].to_pylist() == [[4], [1], [1], [], []]
    assert temporal["item_pos_users"].to_pylist() == [[], [], [], [], [0]]


@pytest.fixture(scope="module")
def built_bags(build: Any, tiny_raw: Path) -> dict[str, dict[str, Any]]:
    return {
        "random": build(tiny_raw, split="random", seed=3, history_bags=True, history_folds=3),
        "temporal": build(tiny_raw, split="temporal", history_bags=True, history_max_len=3),
    }


def test_bags_are_sparse_features_of_entity_ids(
    built_bags: dict[str, dict[str, Any]],
) -> None:
    for out in built_bags.values():
        meta = out["meta"]["sparse_features"]
        n_users, n_items = out["meta"]["n_users"], out["meta"]["n_items"]
        for name, (_, member, _) in HISTORY_FEATURES.items():
            spec = meta[name]
            assert spec["multi_valued"] and spec["ids_of"] == f"{member}_id"
            assert spec["vocab_size"] == (n_users if member == "user" else n_items)
            lengths = []
            for split in ("train", "val", "test"):
                lists = out[split][name].to_pylist()
                flat = [x for lst in lists for x in lst]
                assert all(0 <= x < spec["vocab_size"] for x in flat)
                lengths += [len(lst) for lst in lists]
            assert max(lengths) == spec["max_len"]
    assert built_bags["temporal"]["meta"]["sparse_features"]["user_pos_items"]["max_len"] <= 3
    assert any(built_bags["random"]["train"]["user_pos_items"].to_pylist())


@pytest.mark.parametrize("split", ["random", "temporal"])
@pytest.mark.parametrize("was_positive", [True, False])
def test_own_rating_never_reaches_own_bags(
    split: str,
    was_positive: bool,
    build: Any,
    built_bags: dict[str, dict[str, Any]],
    tiny_tables: dict[str, pa.Table],
    tmp_path: Path,
) -> None:
    """Flip a training row's rating: its own row (and, temporal, every row of the same
    user or item at the same or an earlier time) keeps every bag identical; rows that
    may read it change, so the test can fail."""
    config: dict[str, Any] = {"split": split, "history_bags": True}
    config.update({"seed": 3, "history_folds": 3} if split == "random" else {"history_max_len": 3})
    rows, after, changed = flip_a_training_rating(
        build, built_bags[split], tiny_tables, split, was_positive, tmp_path, config
    )
    moved = [
        name for name in HISTORY_FEATURES if any(rows[k][name] != after[k][name] for k in changed)
    ]
    assert moved  # the flip moved the row between a positive and a negative bag


@pytest.mark.parametrize(
    "flag, value", [("features.history_folds", 1), ("features.history_max_len", 0)]
)
def test_bad_history_options_exit_2(
    flag: str, value: int, tiny_raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = fails([f"run_dir={tmp_path}", f"features.raw_dir={tiny_raw}", f"{flag}={value}"], capsys)
    assert flag in err
