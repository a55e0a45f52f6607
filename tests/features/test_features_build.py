"""`dlrrec features build` on a tiny raw-reviews folder: schemas, indices, vocab, stats."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from tiny_reviews import vectors

from dlrrec.config import ConfigError
from features.config import FeaturesConfig
from features.main import run

D = 384
EXAMPLE_COLUMNS = [
    ("user_id", pa.int64()),
    ("item_id", pa.int64()),
    ("label", pa.float32()),
    ("rating", pa.float32()),
    ("timestamp", pa.int64()),
    ("categories", pa.list_(pa.int64())),
    ("occupation", pa.int64()),
    ("gender", pa.int64()),
    ("age_bucket", pa.int64()),
    ("zip_prefix", pa.int64()),
    ("year", pa.float32()),
    ("age", pa.float32()),
    ("user_text_key", pa.int64()),
]
AGE_NAMES = ["<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+"]


def columns(table: pa.Table) -> list[tuple[str, pa.DataType]]:
    return [(f.name, f.type) for f in table.schema]


def raw_rows(tables: dict[str, pa.Table]) -> dict[tuple[str, str], dict[str, Any]]:
    """Interactions keyed by (user, item); the tiny data has one rating per pair."""
    return {(r["user"], r["item"]): r for r in tables["interactions.parquet"].to_pylist()}


def decoded(out: dict[str, Any], split: str) -> list[dict[str, Any]]:
    """Example rows with raw user/item ids attached (via the entity tables)."""
    users = out["users"]["user"].to_pylist()
    items = out["items"]["item"].to_pylist()
    rows = out[split].drop_columns(["user_text_key"]).to_pylist()
    for r in rows:
        r["user"], r["item"] = users[r["user_id"]], items[r["item_id"]]
    return rows


def test_output_schemas(built_random: dict[str, Any]) -> None:
    for split in ("train", "val", "test"):
        assert columns(built_random[split]) == EXAMPLE_COLUMNS
    assert columns(built_random["items"]) == [
        ("item_id", pa.int64()),
        ("item", pa.string()),
        ("item_text", pa.list_(pa.float16(), D)),
        ("n_train_pos", pa.int32()),
    ]
    assert columns(built_random["users"]) == [
        ("user_id", pa.int64()),
        ("user", pa.string()),
        ("user_text", pa.list_(pa.float16(), D)),
        ("profile_count", pa.int32()),
        ("has_profile", pa.bool_()),
    ]
    for split in ("train", "val", "test"):
        assert built_random[split].num_rows > 0
        assert all(built_random[split][c].null_count == 0 for c in built_random[split].column_names)


def test_meta(built_random: dict[str, Any], tiny_tables: dict[str, pa.Table]) -> None:
    meta = built_random["meta"]
    n = tiny_tables["interactions.parquet"].num_rows
    assert meta["schema_version"] == 1
    assert meta["rows"] == {s: built_random[s].num_rows for s in ("train", "val", "test")}
    assert sum(meta["rows"].values()) == n
    assert meta["positives"] == {
        s: int(built_random[s]["label"].to_numpy().sum()) for s in ("train", "val", "test")
    }
    assert meta["n_users"] == 14 and meta["n_items"] == 11
    assert meta["label_rule"] == "rating >= 4.0"
    assert meta["split"] == "random" and meta["seed"] == 3
    assert meta["dense_features"] == ["year", "age"]
    assert meta["content"] == {"user": ["user_text"], "item": ["item_text"]}
    assert meta["content_dim"] == D
    assert set(meta["input_hashes"]) == {"interactions.parquet", "items.parquet", "users.parquet"}
    assert meta["config"]["seed"] == 3 and len(meta["fingerprint"]) == 64
    sparse = meta["sparse_features"]
    assert set(sparse) == {
        "user_id", "item_id", "categories", "occupation", "gender", "age_bucket", "zip_prefix",
    }  # fmt: skip
    assert sparse["user_id"] == {"vocab_size": 14, "multi_valued": False, "max_len": 1}
    assert sparse["item_id"] == {"vocab_size": 11, "multi_valued": False, "max_len": 1}
    assert sparse["categories"]["multi_valued"] is True
    for name in ("categories", "occupation", "gender", "age_bucket", "zip_prefix"):
        assert sparse[name]["vocab_size"] == len(meta["vocab"][name]) + 1
    lengths = [
        len(c) for s in ("train", "val", "test") for c in built_random[s]["categories"].to_pylist()
    ]
    assert sparse["categories"]["max_len"] == max(lengths)
    for split in ("train", "val", "test"):
        for name, info in sparse.items():
            ids = built_random[split][name]
            flat = ids.combine_chunks().flatten() if info["multi_valued"] else ids
            values = flat.to_numpy()
            assert values.min(initial=0) >= 0 and values.max(initial=0) < info["vocab_size"]


def test_entity_indices_cover_every_entity(
    built_random: dict[str, Any], tiny_tables: dict[str, pa.Table]
) -> None:
    users, items = built_random["users"], built_random["items"]
    # Digit-only ids sort numerically: user "1" is user_id 0, "10" comes after "9".
    assert users["user"].to_pylist() == [str(u) for u in range(1, 15)]
    assert users["user_id"].to_pylist() == list(range(14))
    assert items["item"].to_pylist() == [str(i) for i in range(1, 12)]
    assert items["item_id"].to_pylist() == list(range(11))
    raw = raw_rows(tiny_tables)
    seen = set()
    for split in ("train", "val", "test"):
        for r in decoded(built_random, split):
            src = raw[(r["user"], r["item"])]
            assert r["timestamp"] == src["timestamp"]
            assert r["label"] == (1.0 if src["rating"] >= 4.0 else 0.0)
            assert r["rating"] == src["rating"]  # kept as a training target (the rating head)
            seen.add((r["user"], r["item"]))
    assert seen == set(raw)


def test_random_split_sizes(built_random: dict[str, Any], tiny_tables: dict[str, pa.Table]) -> None:
    n = tiny_tables["interactions.parquet"].num_rows
    rows = built_random["meta"]["rows"]
    assert rows["train"] == round(0.8 * n) and rows["val"] == round(0.1 * n)
    assert rows["test"] == n - rows["train"] - rows["val"]


def test_temporal_split_by_time(built_temporal: dict[str, Any]) -> None:
    ts = {s: built_temporal[s]["timestamp"].to_numpy() for s in ("train", "val", "test")}
    assert ts["train"].max() < ts["val"].min() <= ts["val"].max() < ts["test"].min()
    cut1, cut2 = built_temporal["meta"]["split_cutoffs"]
    assert ts["train"].max() < cut1 <= ts["val"].min() and ts["test"].min() >= cut2


def test_sparse_vocab_from_train_rows_only(
    built_random: dict[str, Any], tiny_tables: dict[str, pa.Table]
) -> None:
    vocab = built_random["meta"]["vocab"]
    users = {r["user"]: r for r in tiny_tables["users.parquet"].to_pylist()}
    items = {r["item"]: r for r in tiny_tables["items.parquet"].to_pylist()}

    def user_value(user: str, name: str) -> Any:
        u = users[user]
        if name == "age_bucket":
            return (
                None
                if u["age"] is None
                else AGE_NAMES[int(np.digitize(u["age"], [18, 25, 35, 45, 50, 56]))]
            )
        if name == "zip_prefix":
            return None if u["zip"] is None else u["zip"][:1]
        return u[name]

    train = decoded(built_random, "train")
    for name in ("occupation", "gender", "age_bucket", "zip_prefix"):
        expected = {user_value(r["user"], name) for r in train} - {None}
        key = (lambda v: AGE_NAMES.index(v)) if name == "age_bucket" else None
        assert vocab[name] == sorted(expected, key=key), name
    assert vocab["categories"] == sorted({c for r in train for c in items[r["item"]]["categories"]})
    n_oov = 0
    for split in ("train", "val", "test"):
        for r in decoded(built_random, split):
            for name in ("occupation", "gender", "age_bucket", "zip_prefix"):
                v = user_value(r["user"], name)
                want = vocab[name].index(v) + 1 if v in vocab[name] else 0
                assert r[name] == want, (split, name)
                n_oov += want == 0
            cats = items[r["item"]]["categories"]
            assert r["categories"] == [
                vocab["categories"].index(c) + 1 if c in vocab["categories"] else 0 for c in cats
            ]
    assert n_oov > 0  # the user with no age/zip exercises the OOV bucket


def test_dense_standardised_with_train_stats(
    built_random: dict[str, Any], tiny_tables: dict[str, pa.Table]
) -> None:
    users = {r["user"]: r for r in tiny_tables["users.parquet"].to_pylist()}
    items = {r["item"]: r for r in tiny_tables["items.parquet"].to_pylist()}
    raw = {
        "year": lambda r: items[r["item"]]["year"],
        "age": lambda r: users[r["user"]]["age"],
    }
    stats = built_random["meta"]["dense_stats"]
    train = decoded(built_random, "train")
    for name, get in raw.items():
        x = np.array([get(r) for r in train if get(r) is not None], dtype=np.float64)
        assert stats[name]["mean"] == pytest.approx(x.mean())
        assert stats[name]["std"] == pytest.approx(x.std())
        z_train = np.array([r[name] for r in train])
        has = np.array([get(r) is not None for r in train])
        assert abs(z_train[has].mean()) < 1e-5 and z_train[has].std() == pytest.approx(
            1.0, abs=1e-5
        )
        for split in ("train", "val", "test"):
            for r in decoded(built_random, split):
                v = get(r)
                want = 0.0 if v is None else (v - stats[name]["mean"]) / stats[name]["std"]
                assert r[name] == pytest.approx(want, abs=1e-5)
    missing_year = [r for r in train if items[r["item"]]["year"] is None]
    assert missing_year and all(r["year"] == 0.0 for r in missing_year)


def test_entity_tables(built_random: dict[str, Any]) -> None:
    items_vec = vectors(built_random["items"], "item_text").astype(np.float64)
    assert np.allclose(np.linalg.norm(items_vec, axis=1), 1.0, atol=2e-3)
    train = built_random["train"]
    u, i = train["user_id"].to_numpy(), train["item_id"].to_numpy()
    pos = train["label"].to_numpy() == 1.0
    assert (
        built_random["items"]["n_train_pos"].to_pylist()
        == np.bincount(i[pos], minlength=11).tolist()
    )
    users = built_random["users"]
    profiles = vectors(users, "user_text").astype(np.float64)
    for user in range(14):
        mine = i[pos & (u == user)]
        assert users["profile_count"][user].as_py() == len(mine)
        assert users["has_profile"][user].as_py() == (len(mine) > 0)
        want = items_vec[mine].mean(axis=0) if len(mine) else np.zeros(D)
        np.testing.assert_allclose(profiles[user], want, atol=1e-3)
    assert not users["has_profile"][13].as_py()  # user "14" never rates anything


def test_reuse_refuse_overwrite(tiny_raw: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    meta = run(FeaturesConfig(run_dir=str(run_dir), raw_dir=str(tiny_raw)))
    meta_path = run_dir / "features" / "_meta.json"
    stamp = os.stat(meta_path).st_mtime_ns
    # The same data in another folder is the same input: reused, not rebuilt.
    moved = shutil.copytree(tiny_raw, tmp_path / "moved")
    again = run(FeaturesConfig(run_dir=str(run_dir), raw_dir=str(moved)))
    assert again["fingerprint"] == meta["fingerprint"]
    assert os.stat(meta_path).st_mtime_ns == stamp
    with pytest.raises(ConfigError, match="overwrite=true"):
        run(FeaturesConfig(run_dir=str(run_dir), raw_dir=str(tiny_raw), seed=1))
    new = run(FeaturesConfig(run_dir=str(run_dir), raw_dir=str(tiny_raw), seed=1, overwrite=True))
    assert new["fingerprint"] != meta["fingerprint"]
    assert [p.name for p in run_dir.iterdir()] == ["features"]  # no temp folders left


def test_repeated_pairs_share_a_split_and_are_counted(
    build: Any, tiny_tables: dict[str, pa.Table], tmp_path: Path
) -> None:
    """A (user, item) pair reviewed several times: all its rows land in one split, so a
    val/test row never meets its own pair's label in train; _meta.json counts repeats."""
    from tiny_reviews import write_raw

    inter = tiny_tables["interactions.parquet"]
    extra = []
    for r in range(0, 40, 5):  # 8 pairs, 3 more rows each, other ratings and times
        row = inter.slice(r, 1).to_pylist()[0]
        for k in range(3):
            extra.append(dict(row, rating=float(1 + (r + k) % 5), timestamp=row["timestamp"] + 1 + k,
                              review_id=f"{row['review_id']}_again{k}"))  # fmt: skip
    tables = dict(tiny_tables)
    tables["interactions.parquet"] = pa.concat_tables([inter, pa.Table.from_pylist(extra, schema=inter.schema)])
    out = build(write_raw(tmp_path / "raw", tables), split="random", seed=3)
    where: dict[tuple[int, int], set[str]] = {}
    for s in ("train", "val", "test"):
        for u, i in zip(out[s]["user_id"].to_pylist(), out[s]["item_id"].to_pylist(), strict=True):
            where.setdefault((u, i), set()).add(s)
    assert all(len(v) == 1 for v in where.values())
    assert out["meta"]["repeated_pairs"] == {"pairs": 8, "extra_rows": 24}
    assert sum(out["meta"]["rows"].values()) == inter.num_rows + 24


@pytest.mark.parametrize("which", ["built_random", "built_temporal"])
def test_meta_keys_are_the_typed_schema(which: str, request: pytest.FixtureRequest) -> None:
    # dlrrec/meta.py types what the readers use; a key renamed or added on one side only fails here
    from dlrrec.meta import FeaturesMeta, SparseFeatureMeta

    meta = request.getfixturevalue(which)["meta"]
    declared = FeaturesMeta.__required_keys__ | FeaturesMeta.__optional_keys__
    assert FeaturesMeta.__required_keys__ <= set(meta) <= declared, set(meta) ^ declared
    for spec in meta["sparse_features"].values():
        assert SparseFeatureMeta.__required_keys__ <= set(spec) <= (
            SparseFeatureMeta.__required_keys__ | SparseFeatureMeta.__optional_keys__
        )
