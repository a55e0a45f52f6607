"""Leakage rules (DESIGN.md): a row's features never depend on its own rating or text.

The profile sums are exact in float64 (float16 inputs), so "unchanged" means
bit-for-bit equal, not approximately equal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from tiny_reviews import vectors, with_review, write_raw


def by_pair(out: dict[str, Any]) -> dict[tuple[int, int], dict[str, Any]]:
    """Every example row, keyed by (user_id, item_id), with its split and profile."""
    rows = {}
    for split in ("train", "val", "test"):
        table = out[split]
        prof = vectors(table, "user_text")
        for k, r in enumerate(table.drop_columns(["user_text"]).to_pylist()):
            r["split"], r["user_text"] = split, prof[k]
            rows[(r["user_id"], r["item_id"])] = r
    return rows


def same_features(a: dict[str, Any], b: dict[str, Any]) -> bool:
    for key in a:
        if key == "label":
            continue
        if key == "user_text":
            if not np.array_equal(a[key], b[key]):
                return False
        elif a[key] != b[key]:
            return False
    return True


def test_random_profiles_leave_the_row_out(built_random: dict[str, Any]) -> None:
    """Train rows: mean over the user's OTHER train positives; val/test: all of them."""
    item_vec = vectors(built_random["items"], "item_text").astype(np.float64)
    rows = by_pair(built_random)
    train_pos = [k for k, r in rows.items() if r["split"] == "train" and r["label"] == 1.0]
    for (user, item), r in rows.items():
        others = [i for (u, i) in train_pos if u == user and (r["split"] != "train" or i != item)]
        want = item_vec[others].mean(axis=0) if others else np.zeros(item_vec.shape[1])
        np.testing.assert_allclose(r["user_text"].astype(np.float64), want, atol=1e-3)


def test_temporal_profiles_use_strictly_earlier_positives(
    built_temporal: dict[str, Any],
) -> None:
    """Every split: mean over the user's positives with an earlier timestamp, any split."""
    item_vec = vectors(built_temporal["items"], "item_text").astype(np.float64)
    rows = list(by_pair(built_temporal).values())
    n_ties = 0
    for r in rows:
        earlier = [
            s["item_id"]
            for s in rows
            if s["user_id"] == r["user_id"]
            and s["timestamp"] < r["timestamp"]
            and s["label"] == 1.0
        ]
        n_ties += sum(
            s is not r and s["user_id"] == r["user_id"] and s["timestamp"] == r["timestamp"]
            for s in rows
        )
        want = item_vec[earlier].mean(axis=0) if earlier else np.zeros(item_vec.shape[1])
        np.testing.assert_allclose(r["user_text"].astype(np.float64), want, atol=1e-3)
    assert n_ties > 0  # the tiny data has equal timestamps within a user
    assert any(r["split"] != "train" and r["user_text"].any() for r in rows)


@pytest.mark.parametrize("split", ["random", "temporal"])
@pytest.mark.parametrize("was_positive", [True, False])
def test_changing_own_rating_and_text_leaves_row_features_unchanged(
    split: str,
    was_positive: bool,
    build: Any,
    built_random: dict[str, Any],
    built_temporal: dict[str, Any],
    tiny_tables: dict[str, pa.Table],
    tmp_path: Path,
) -> None:
    base = built_random if split == "random" else built_temporal
    config = {"split": "random", "seed": 3} if split == "random" else {"split": "temporal"}
    rows = by_pair(base)
    users = base["users"]["user"].to_pylist()
    items = base["items"]["item"].to_pylist()
    inter = tiny_tables["interactions.parquet"].to_pylist()

    def later_same_user(key: tuple[int, int]) -> list[tuple[int, int]]:
        r = rows[key]
        return [k for k, s in rows.items() if k[0] == key[0] and s["timestamp"] > r["timestamp"]]

    # A train row of a user with other rows whose features do depend on this rating.
    candidates = [
        k
        for k, r in rows.items()
        if r["split"] == "train"
        and (r["label"] == 1.0) == was_positive
        and (
            len([s for s in rows.values() if s["user_id"] == k[0] and s["split"] == "train"]) >= 3
            if split == "random"
            else len(later_same_user(k)) >= 1
        )
    ]
    key = candidates[0]
    row = next(
        n for n, x in enumerate(inter) if (x["user"], x["item"]) == (users[key[0]], items[key[1]])
    )
    flipped = with_review(tiny_tables, row, 1.0 if was_positive else 5.0, "A review of my own.")
    out = build(write_raw(tmp_path / "raw", flipped), **config)
    after = by_pair(out)

    assert after[key]["label"] != rows[key]["label"]
    assert same_features(rows[key], after[key])
    # Rows at the same timestamp of the same user cannot see it either (temporal).
    for k, r in rows.items():
        if k[0] == key[0] and r["timestamp"] == rows[key]["timestamp"] and split == "temporal":
            assert same_features(r, after[k])
    # ... while other rows of that user do see it, so the test can fail.
    changed = [
        k for k in rows if k[0] == key[0] and k != key and not same_features(rows[k], after[k])
    ]
    assert changed
