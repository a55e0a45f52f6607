"""The paper's sparse categories (capped, OOV bucket, no pad id) and dense price tier.

Every number is recomputed here from the raw input with plain Python loops.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tiny_reviews import write_raw

from features.config import FeaturesConfig
from features.dense import item_prices
from features.examples import cap_lists, oov_counts
from features.main import run
from features.schema import RAW_INTERACTIONS, RAW_ITEMS
from features.sources import read_source

FIXTURES = Path(__file__).parents[1] / "fixtures"
SPLITS = ("train", "val", "test")


def build(tmp_path: Path, **config: Any) -> dict[str, Any]:
    run_dir = tmp_path / "run"
    run(FeaturesConfig(run_dir=str(run_dir), **config))
    root = run_dir / "features"
    out: dict[str, Any] = {"meta": json.loads((root / "_meta.json").read_text())}
    for s in SPLITS:
        out[s] = pq.read_table(root / "examples" / s / "part-00000.parquet").to_pylist()
    out["items"] = pq.read_table(root / "entities" / "items.parquet").to_pylist()
    return out


def test_cap_lists_matches_a_loop() -> None:
    rng = np.random.default_rng(1)
    lists: list[list[str | None] | None] = []
    for _ in range(200):
        if rng.random() < 0.1:
            lists.append(None)
            continue
        n = int(rng.integers(0, 16))
        lists.append([None if rng.random() < 0.1 else f"c{rng.integers(0, 40)}" for _ in range(n)])
    for cap in (1, 3, 11):
        capped, cut = cap_lists(pa.array(lists, pa.list_(pa.string())), cap)
        expect = [[v for v in (x or []) if v is not None] for x in lists]
        assert capped.to_pylist() == [x[:cap] for x in expect]
        assert cut == sum(len(x) > cap for x in expect)


def test_oov_counts_matches_a_loop() -> None:
    rng = np.random.default_rng(2)
    n = 300
    codes = rng.integers(0, 3, n).astype(np.int8)
    single = rng.integers(0, 4, n)
    lists = [rng.integers(0, 5, int(rng.integers(0, 6))).tolist() for _ in range(n)]
    got = oov_counts({"s": single, "m": pa.array(lists, pa.list_(pa.int64()))}, codes)
    for c, s in enumerate(SPLITS):
        assert got["s"][s] == sum(1 for i in range(n) if codes[i] == c and single[i] == 0)
        assert got["m"][s] == sum(x.count(0) for i, x in enumerate(lists) if codes[i] == c)


def test_categories_capped_in_source_order(tmp_path: Path) -> None:
    out = build(tmp_path, raw_dir=str(FIXTURES / "yelp"), source="yelp", max_categories=2)
    meta = out["meta"]
    raw_items = {
        r["item"]: r["categories"] or []
        for r in read_source("yelp", FIXTURES / "yelp").items.to_pylist()
    }
    assert meta["categories"] == {
        "max_categories": 2,
        "truncated_lists": sum(len(c) > 2 for c in raw_items.values()),
    }
    assert meta["categories"]["truncated_lists"] >= 2
    vocab = meta["vocab"]["categories"]
    item_of = {r["item_id"]: r["item"] for r in out["items"]}
    train_items = {item_of[r["item_id"]] for r in out["train"]}
    # The vocabulary holds the kept (first two) categories of training items only.
    assert vocab == sorted({c for i in train_items for c in raw_items[i][:2]})
    lengths = set()
    for s in SPLITS:
        for r in out[s]:
            kept = raw_items[item_of[r["item_id"]]][:2]
            assert r["categories"] == [vocab.index(c) + 1 if c in vocab else 0 for c in kept]
            lengths.add(len(r["categories"]))
    assert max(lengths) == 2
    spec = meta["sparse_features"]["categories"]
    assert spec["multi_valued"] and spec["vocab_size"] == len(vocab) + 1 and spec["max_len"] == 2


def test_categories_unseen_in_train_go_to_the_oov_bucket(
    tmp_path: Path, tiny_tables: dict[str, pa.Table]
) -> None:
    items = tiny_tables["items.parquet"].to_pylist()
    items.append(
        {"item": "12", "title": "Late Noir", "categories": ["Noir", "Drama"], "year": 1999}
    )
    inter = tiny_tables["interactions.parquet"].to_pylist()
    for u in ("1", "2", "3"):  # the latest timestamps: test rows under the temporal split
        inter.append(
            {
                "user": u,
                "item": "12",
                "rating": 4.0,
                "timestamp": 9000,
                "text": None,
                "review_id": f"{u}_12",
            }
        )
    raw = write_raw(
        tmp_path / "raw",
        dict(
            tiny_tables,
            **{
                "items.parquet": pa.Table.from_pylist(items, schema=RAW_ITEMS),
                "interactions.parquet": pa.Table.from_pylist(inter, schema=RAW_INTERACTIONS),
            },
        ),
    )
    out = build(tmp_path, raw_dir=str(raw), split="temporal")
    vocab = out["meta"]["vocab"]["categories"]
    assert "Noir" not in vocab and "Drama" in vocab
    item_of = {r["item_id"]: r["item"] for r in out["items"]}
    noir = [r for r in out["test"] if item_of[r["item_id"]] == "12"]
    assert len(noir) == 3
    assert all(r["categories"] == [0, vocab.index("Drama") + 1] for r in noir)
    counts = out["meta"]["sparse_oov"]
    assert counts["id"] == 0
    for s in SPLITS:
        assert counts["counts"]["categories"][s] == sum(r["categories"].count(0) for r in out[s])
        assert counts["counts"]["gender"][s] == sum(r["gender"] == 0 for r in out[s])
    assert counts["counts"]["categories"] == {"train": 0, "val": 0, "test": 3}
    # Ragged bags: an item without genres has an empty list, no pad id anywhere.
    lengths = {len(r["categories"]) for s in SPLITS for r in out[s]}
    assert 0 in lengths and len(lengths) >= 3


@pytest.mark.parametrize("source", ["yelp", "google_local"])
def test_price_tier_standardised_with_train_rows(source: str, tmp_path: Path) -> None:
    out = build(tmp_path, raw_dir=str(FIXTURES / source), source=source, seed=1)
    meta = out["meta"]
    assert meta["dense_features"] == ["year", "age", "price", "has_price"]
    tier = {
        r["item"]: r["price_tier"] for r in read_source(source, FIXTURES / source).items.to_pylist()
    }
    item_of = {r["item_id"]: r["item"] for r in out["items"]}
    train_tiers = [tier[item_of[r["item_id"]]] for r in out["train"]]
    known = [t for t in train_tiers if t is not None]
    mean = sum(known) / len(known)
    std = (sum((t - mean) ** 2 for t in known) / len(known)) ** 0.5 or 1.0
    assert meta["price"] == {
        "source": "price_tier",
        "items_with_price": sum(t is not None for t in tier.values()),
        "train_rows_with_price": len(known),
        "present": True,
        "mean": pytest.approx(mean),
        "std": pytest.approx(std),
    }
    assert meta["dense_stats"]["price"] == {"mean": pytest.approx(mean), "std": pytest.approx(std)}
    seen = {0.0, 1.0}
    for s in SPLITS:
        for r in out[s]:
            t = tier[item_of[r["item_id"]]]
            assert r["has_price"] == (0.0 if t is None else 1.0)
            assert r["price"] == pytest.approx(0.0 if t is None else (t - mean) / std, abs=1e-6)
            seen.discard(r["has_price"])
    assert not seen  # rows with and without a price


def test_currency_price_is_log_scaled(tmp_path: Path) -> None:
    raw = read_source("amazon2023", FIXTURES / "amazon2023")
    x, used = item_prices(raw.items)
    prices = raw.items["price"].to_pylist()
    assert used == "price"
    assert [None if np.isnan(v) else v for v in x] == [
        None if p is None else pytest.approx(np.log1p(p)) for p in prices
    ]
    out = build(tmp_path, raw_dir=str(FIXTURES / "amazon2023"), source="amazon2023")
    assert out["meta"]["price"]["source"] == "price" and "price" in out["train"][0]


def test_no_price_means_no_price_feature(
    tmp_path: Path, tiny_raw: Path, tiny_tables: dict[str, pa.Table]
) -> None:
    out = build(tmp_path, raw_dir=str(tiny_raw))
    meta = out["meta"]
    assert meta["dense_features"] == ["year", "age"]
    assert meta["price"] == {
        "source": None,
        "items_with_price": 0,
        "train_rows_with_price": 0,
        "present": False,
    }
    assert "price" not in out["train"][0] and "has_price" not in out["train"][0]
    assert "price" not in meta["dense_stats"]
    assert meta["skipped_rows"] == {
        "policy": "error",
        "rating_out_of_range": 0,
        "empty_text": 0,
        "duplicate_review_id": 0,
    }
