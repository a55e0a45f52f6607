"""A tiny raw-reviews dataset (features/schema.py) and a reader for the built outputs.

14 users and 11 items, one user and one item with no interactions, an item with no
genres, one with no year, a user with no age/zip, and many equal timestamps per user
so the strictly-earlier rule meets ties.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import strategies as st

from features.schema import RAW_INTERACTIONS, RAW_ITEMS, RAW_USERS

TITLES = [
    "Toy Story", "GoldenEye", "Four Rooms", "Get Shorty", "Copycat", "Twelve Monkeys",
    "Babe", "Dead Man Walking", "Richard III", "Seven", "Unwatched Film",
]  # fmt: skip
GENRES = ["Action", "Comedy", "Drama", "Thriller", "Children's"]


def same_length_lists(*elements: st.SearchStrategy) -> st.SearchStrategy:
    """A tuple of 1-40 rows: one list per element strategy, all of the same length."""
    return st.integers(1, 40).flatmap(
        lambda n: st.tuples(*(st.lists(e, min_size=n, max_size=n) for e in elements))
    )


def raw_tables(seed: int = 0) -> dict[str, pa.Table]:
    rng = np.random.default_rng(seed)
    n_users, n_items = 14, len(TITLES)
    items = pa.Table.from_pylist(
        [
            {
                "item": f"{i + 1}",
                "title": TITLES[i],
                "categories": []
                if i == 2
                else sorted(rng.choice(GENRES, rng.integers(1, 4), replace=False).tolist()),
                "year": None if i == 4 else int(rng.integers(1960, 1998)),
            }
            for i in range(n_items)
        ],
        schema=RAW_ITEMS,
    )
    ages = [12, 19, 24, 25, 33, 40, 45, 49, 51, 60, 30, 22, None, 35]
    users = pa.Table.from_pylist(
        [
            {
                "user": f"{u + 1}",
                "age": ages[u],
                "gender": "MF"[u % 2],
                "occupation": ["student", "engineer", "artist", "writer"][u % 4],
                "zip": None if u == 12 else f"{rng.integers(0, 10)}{rng.integers(1000, 9999)}",
            }
            for u in range(n_users)
        ],
        schema=RAW_USERS,
    )
    rows = []
    for u in range(n_users - 1):  # the last user has no interactions
        k = int(rng.integers(4, 10))
        for i in rng.choice(n_items - 1, k, replace=False):  # the last item is never rated
            rows.append(
                {
                    "user": f"{u + 1}",
                    "item": f"{i + 1}",
                    "rating": float(rng.integers(1, 6)),
                    "timestamp": int(1000 + 10 * rng.integers(0, 12)),  # few distinct times
                    "text": None,
                    "review_id": f"{u + 1}_{i + 1}",
                }
            )
    inter = pa.Table.from_pylist(rows, schema=RAW_INTERACTIONS)
    return {"interactions.parquet": inter, "items.parquet": items, "users.parquet": users}


def write_raw(raw_dir: Path, tables: dict[str, pa.Table]) -> Path:
    raw_dir.mkdir(parents=True, exist_ok=True)
    for name, table in tables.items():
        pq.write_table(table, raw_dir / name)
    return raw_dir


def with_review(
    tables: dict[str, pa.Table], row: int, rating: float, text: str
) -> dict[str, pa.Table]:
    """A copy of `tables` with interaction `row`'s rating and review text replaced."""
    inter = tables["interactions.parquet"]
    ratings = inter["rating"].to_numpy().copy()
    ratings[row] = rating
    texts = inter["text"].to_pylist()
    texts[row] = text
    for name, values in (("rating", pa.array(ratings, pa.float32())), ("text", pa.array(texts))):
        idx = inter.schema.get_field_index(name)
        inter = inter.set_column(idx, inter.schema.field(idx), values)
    return dict(tables, **{"interactions.parquet": inter})


def read_outputs(run_dir: Path) -> dict:
    """{"meta", "train", "val", "test", "users", "items"} of a built features folder."""
    root = Path(run_dir) / "features"
    out = {"meta": json.loads((root / "_meta.json").read_text())}
    for split in ("train", "val", "test"):
        out[split] = pq.read_table(root / "examples" / split / "part-00000.parquet")
    out["users"] = pq.read_table(root / "entities" / "users.parquet")
    out["items"] = pq.read_table(root / "entities" / "items.parquet")
    if (root / "entities" / "user_profiles").is_dir():
        out["profiles"] = pq.read_table(root / "entities" / "user_profiles")
    for col, spec in out["meta"].get("keyed_content", {}).items():
        out[f"keyed:{col}"] = pq.read_table(root / spec["file"])
    return out


def keyed_vectors(out: dict, split: str, col: str) -> np.ndarray:
    """float16 [n, D] `col` of each row of `split` as the trainer reads it: the row of
    the keyed table that the row's key names (a key the table lacks: a zero vector)."""
    spec = out["meta"]["keyed_content"][col]
    table = out[f"keyed:{col}"]
    n = out["meta"][f"n_{spec.get('entity', 'user')}s"] * spec["slots"]
    full = np.zeros((n, out["meta"]["content_dim"]), np.float16)
    full[table["key"].to_numpy()] = vectors(table, col)
    return full[out[split][spec["key"]].to_numpy()]


def row_profiles(out: dict, split: str) -> np.ndarray:
    """float16 [n, D] user_text of each row of `split`, as the trainer sees it: the
    profile-table row its `user_text_key` names (or, in an llm build, the summary's)."""
    table = out[split]
    if out["meta"]["keyed_content"]["user_text"]["file"] != "entities/user_profiles":
        return keyed_vectors(out, split, "user_text")
    keys = out["profiles"]["key"].to_numpy()
    assert (keys == np.arange(len(keys))).all()  # row k of the table is key k
    return vectors(out["profiles"], "user_text")[table["user_text_key"].to_numpy()]


def vectors(table: pa.Table, column: str) -> np.ndarray:
    """A fixed_size_list<float16> column -> float16 [n, D]."""
    col = table[column].combine_chunks()
    return col.flatten().to_numpy().reshape(len(col), col.type.list_size)


def fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run `dlrrec features build ARGV`; assert exit 2 and one error line; return it."""
    from features.main import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("dlrrec features build: error: ")
    return err
