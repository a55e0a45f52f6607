"""Leakage rules (DESIGN.md): a row's features never depend on its own rating or text.

The profile sums are exact in float64 (float16 inputs), so "unchanged" means
bit-for-bit equal, not approximately equal.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from tiny_reviews import (
    keyed_vectors,
    read_outputs,
    row_profiles,
    vectors,
    with_review,
    write_raw,
)

from features.profiles import time_blocks
from features.stats import row_folds


def by_pair(out: dict[str, Any]) -> dict[tuple[int, int], dict[str, Any]]:
    """Every example row, keyed by (user_id, item_id), with its split and profile."""
    rows = {}
    for split in ("train", "val", "test"):
        table = out[split]
        prof = row_profiles(out, split)
        plain = table.drop_columns(["user_text"]) if "user_text" in table.column_names else table
        for k, r in enumerate(plain.to_pylist()):
            r["split"], r["user_text"] = split, prof[k]
            rows[(r["user_id"], r["item_id"])] = r
    return rows


def rebuild_with_own_review(
    build: Any,
    base: dict[str, Any],
    tables: dict[str, pa.Table],
    key: tuple[int, int],
    was_positive: bool,
    tmp_path: Path,
    config: dict[str, Any],
) -> dict[tuple[int, int], dict[str, Any]]:
    """Rebuild with the (user, item) row `key` of `base` given the opposite label (rating
    1 or 5) and a text of its own; the rebuilt rows by pair."""
    users, items = base["users"]["user"].to_pylist(), base["items"]["item"].to_pylist()
    inter = tables["interactions.parquet"].to_pylist()
    row = next(
        n for n, x in enumerate(inter) if (x["user"], x["item"]) == (users[key[0]], items[key[1]])
    )
    flipped = with_review(tables, row, 1.0 if was_positive else 5.0, "A review of my own.")
    return by_pair(build(write_raw(tmp_path / "raw", flipped), **config))


def flip_a_training_rating(
    build: Any,
    base: dict[str, Any],
    tables: dict[str, pa.Table],
    split: str,
    was_positive: bool,
    tmp_path: Path,
    config: dict[str, Any],
) -> tuple[dict[tuple[int, int], dict[str, Any]], dict[tuple[int, int], dict[str, Any]], list]:
    """Flip the rating of a training row (one with >= 2 later rows of its user) and
    rebuild; assert the leakage rules of the row-reads-others features (features/stats.py,
    features/history.py): the row itself, and (temporal) every row of its user or item at
    the same or an earlier time, keep every column; (random) val/test rows of other users
    and items too; the rows that changed share its user or item, and some did.

    Returns (rows before, rows after, the keys of the rows that changed).
    """
    rows = by_pair(base)
    key = next(
        k
        for k, r in rows.items()
        if r["split"] == "train"
        and (r["label"] == 1.0) == was_positive
        and sum(s["user_id"] == k[0] and s["timestamp"] > r["timestamp"] for s in rows.values())
        >= 2
    )
    after = rebuild_with_own_review(build, base, tables, key, was_positive, tmp_path, config)
    assert after[key]["label"] != rows[key]["label"]
    assert same_features(rows[key], after[key])
    t0 = rows[key]["timestamp"]
    for k, r in rows.items():
        if split == "temporal" and (k[0] == key[0] or k[1] == key[1]) and r["timestamp"] <= t0:
            assert same_features(r, after[k]), k
        if split == "random" and r["split"] != "train" and k[0] != key[0] and k[1] != key[1]:
            assert same_features(r, after[k]), k
    changed = [k for k in rows if k != key and not same_features(rows[k], after[k])]
    assert changed
    assert all(k[0] == key[0] or k[1] == key[1] for k in changed)
    return rows, after, changed


def same_features(a: dict[str, Any], b: dict[str, Any]) -> bool:
    for key in a:
        if key in ("label", "rating"):  # the row's own targets
            continue
        if key == "user_text":
            if not np.array_equal(a[key], b[key]):
                return False
        elif a[key] != b[key]:
            return False
    return True


def test_random_profiles_read_the_other_folds(built_random: dict[str, Any]) -> None:
    """Train rows: mean over the user's train positives OUTSIDE the row's hash fold (the
    row itself is in its fold); val/test: all of them.  A slow reference per row."""
    item_vec = vectors(built_random["items"], "item_text").astype(np.float64)
    names = built_random["users"]["user"].to_pylist(), built_random["items"]["item"].to_pylist()
    rows = by_pair(built_random)
    fold = dict(zip(rows, row_folds(
        [names[0][u] for u, _ in rows], [names[1][i] for _, i in rows],
        np.array([r["timestamp"] for r in rows.values()]), 5, 3,
    )))  # fmt: skip
    train_pos = [k for k, r in rows.items() if r["split"] == "train" and r["label"] == 1.0]
    shared = 0
    for (user, item), r in rows.items():
        others = [
            i for (u, i) in train_pos
            if u == user and (r["split"] != "train" or fold[(u, i)] != fold[(user, item)])
        ]  # fmt: skip
        want = item_vec[others].mean(axis=0) if others else np.zeros(item_vec.shape[1])
        np.testing.assert_allclose(r["user_text"].astype(np.float64), want, atol=1e-3)
        shared += r["split"] == "train" and r["label"] == 1.0 and bool(others)
    assert shared  # the tiny data has positives whose profile is not empty


def test_temporal_profiles_use_strictly_earlier_blocks(
    built_temporal: dict[str, Any],
) -> None:
    """Every split: mean over the user's positives, any split, in a strictly earlier time
    block; blocks are cut at timestamps, so that is a strictly earlier timestamp."""
    item_vec = vectors(built_temporal["items"], "item_text").astype(np.float64)
    rows = list(by_pair(built_temporal).values())
    ts = np.array([r["timestamp"] for r in rows])
    block = time_blocks(ts, built_temporal["meta"]["config"]["profile_blocks"])
    for a in range(len(rows)):  # blocks are monotone in time: lower block, earlier time
        assert ((block < block[a]) == (ts < ts[block == block[a]].min())).all()
    n_ties = 0
    for a, r in enumerate(rows):
        earlier = [
            s["item_id"]
            for b, s in enumerate(rows)
            if s["user_id"] == r["user_id"] and block[b] < block[a] and s["label"] == 1.0
        ]
        assert all(
            s["timestamp"] < r["timestamp"]
            for s in rows
            if s["item_id"] in earlier and s["user_id"] == r["user_id"]
        )
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
    after = rebuild_with_own_review(build, base, tiny_tables, key, was_positive, tmp_path, config)

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


# ---- review-derived profiles: LLM summaries, price, types, image captions -------------
# A generated Google Local dump through the llm section (a local chat-completions stub
# whose answers follow the reviews it is sent) and the images section (a tiny random
# BLIP-2).  Every profile kind is checked: summary vectors (user_text, item_text),
# caption vectors and masks (user_image, item_image, has_*), price/has_price and
# categories learned from reviews, plus the ids and every other column.

IMAGE_COLUMNS = {"user_image", "item_image", "has_user_image", "has_item_image"}
NEW_TEXT = "The dumplings were a bargain, bargain, bargain. Cheap dumplings everywhere."


@pytest.fixture(scope="module")
def review_dump(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from review_source import answering_stub, image_names, review_records, write_source
    from tiny_blip2 import save_tiny_blip2, write_images

    root = tmp_path_factory.mktemp("leak_reviews")
    reviews, meta = review_records(seed=2)
    write_images(root / "images", [*image_names(reviews), "new.png"])
    with answering_stub() as stub:
        yield {
            "root": root,
            "reviews": reviews,
            "meta": meta,
            "raw": write_source(root / "raw", reviews, meta),
            "blip2": save_tiny_blip2(root / "blip2"),
            "url": stub.url,
        }


def build_reviews(dump: dict[str, Any], raw: Path, run_dir: Path, split: str) -> dict[str, Any]:
    from features.captions import ImagesConfig
    from features.config import FeaturesConfig
    from features.llm import LLMConfig
    from features.main import run

    root = dump["root"]
    run(
        FeaturesConfig(
            run_dir=str(run_dir),
            raw_dir=str(raw),
            source="google_local",
            seed=5,
            split=split,  # type: ignore[arg-type]
            llm=LLMConfig(base_url=dump["url"], cache_dir=str(root / "llm"), folds=3),
            images=ImagesConfig(
                blip2_path=str(dump["blip2"]),
                image_dir=str(root / "images"),
                cache_dir=str(root / "captions"),
                max_new_tokens=5,
            ),
        )
    )
    return read_outputs(run_dir)


@pytest.fixture(scope="module")
def review_bases(
    review_dump: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, Any]]:
    return {
        split: build_reviews(review_dump, review_dump["raw"], tmp_path_factory.mktemp(split), split)
        for split in ("random", "temporal")
    }


def all_features(out: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """Every example row keyed by (user, item) names: split and every column as Python values.

    Two columns are compared decoded: `categories` as the type strings and `price` as
    the tier before standardisation.  Their ids and z-scores go through encodings
    shared by all rows (the training vocabulary, the training mean/std), which any
    training review may shift by adding a new type or moving the mean; that relabels
    every row alike and says nothing about the row's own review.  A keyed column
    (the summaries) is the vector its key names, as the trainer reads it.  Vectors,
    masks and every other column are compared bit for bit.
    """
    users = out["users"]["user"].to_pylist()
    items = out["items"]["item"].to_pylist()
    vocab = out["meta"]["vocab"]["categories"]
    stats = out["meta"]["dense_stats"]["price"]
    rows = {}
    for split in ("train", "val", "test"):
        keyed = {c: keyed_vectors(out, split, c) for c in out["meta"]["keyed_content"]}
        for n, r in enumerate(out[split].to_pylist()):
            r |= {c: v[n].tolist() for c, v in keyed.items()}
            r["split"] = split
            r["categories"] = [vocab[i - 1] if i else None for i in r["categories"]]
            r["price"] = (
                round(r["price"] * stats["std"] + stats["mean"], 4) if r["has_price"] else None
            )
            rows[(users[r["user_id"]], items[r["item_id"]])] = r
    return rows


def differing(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return [k for k in a if k not in ("label", "rating") and a[k] != b[k]]


@pytest.mark.parametrize("split", ["random", "temporal"])
@pytest.mark.parametrize("which", ["train", "val_or_test"])
def test_review_profiles_ignore_the_rows_own_review(
    which: str,
    split: str,
    review_dump: dict[str, Any],
    review_bases: dict[str, dict[str, Any]],
    tmp_path: Path,
) -> None:
    """Change one row's text, rating and photo; rebuild; its features stay bit-identical.

    A training row reads summaries/price/types and photos of the other folds' reviews
    (temporal: of earlier time blocks); a val/test row's review reaches no feature at
    all (temporal: no feature of an earlier row).
    """
    review_base = review_bases[split]
    from review_source import write_source

    base = all_features(review_base)
    reviews = review_dump["reviews"]
    splits = {k: r["split"] for k, r in base.items()}

    def read_by_others(rec: dict[str, Any]) -> int:
        """Val/test rows of the same user and of the same item (they read every training review)."""
        others = [k for k, sp in splits.items() if sp != "train"]
        return min(
            sum(k[0] == rec["user_id"] for k in others), sum(k[1] == rec["gmap_id"] for k in others)
        )

    # A row with a photo of its own when there is one; the perturbation sets a new one.
    candidates = [
        n
        for n, rec in enumerate(reviews)
        if (splits[(rec["user_id"], rec["gmap_id"])] == "train") == (which == "train")
    ]
    n = max(candidates, key=lambda c: (read_by_others(reviews[c]), bool(reviews[c]["pics"])))
    rec = reviews[n]
    key = (rec["user_id"], rec["gmap_id"])
    changed = dict(rec, text=NEW_TEXT, rating=1 if rec["rating"] >= 4 else 5)
    changed["pics"] = [{"url": ["https://lh5.example/p/new.png"]}]
    raw = write_source(
        tmp_path / "raw", [*reviews[:n], changed, *reviews[n + 1 :]], review_dump["meta"]
    )
    after_out = build_reviews(review_dump, raw, tmp_path / "run", split)
    after = all_features(after_out)

    assert after[key]["label"] != base[key]["label"]
    assert differing(base[key], after[key]) == []
    moved = {k: differing(base[k], after[k]) for k in base if k != key}
    if which == "train":
        # ... while rows that may read this review do change, so the test can fail:
        # summaries, caption vectors, and price or categories of the same user/item.
        cols = {c for diff in moved.values() for c in diff}
        assert {"user_text", "item_text", "user_image", "item_image"} <= cols, cols
        assert cols & {"price", "categories"}, cols
        assert all(k[0] == rec["user_id"] or k[1] == rec["gmap_id"] for k, d in moved.items() if d)
    else:
        # Nothing reads a val/test review, but (temporal) later rows' photo vectors.
        for k, d in moved.items():
            assert not d or (split == "temporal" and set(d) <= IMAGE_COLUMNS), (k, d)
    if split == "temporal":  # only later rows of the same user or item may move
        for k, d in moved.items():
            if d:
                assert base[k]["timestamp"] > base[key]["timestamp"], (k, d)
                assert k[0] == rec["user_id"] or k[1] == rec["gmap_id"]
    if which != "train":
        assert after_out["users"].equals(review_base["users"])
        assert after_out["items"].equals(review_base["items"])
