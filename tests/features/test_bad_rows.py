"""Bad review rows through the CLI: one-line errors (exit 2) and `on_bad_rows=skip`.

The raw-reviews Parquet path is scanned in batches (features/io.py `scan_table`), so
the row numbers are checked across batch boundaries too.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tiny_reviews import fails, write_raw

from dlrrec.config import DataError
from features.bad_rows import repeated_rows
from features.io import read_raw_reviews
from features.main import main
from features.sources import read_source

FIXTURES = Path(__file__).parents[1] / "fixtures"


def edit_interactions(tables: dict[str, pa.Table], **columns: list[Any]) -> dict[str, pa.Table]:
    """A copy of the tiny tables with whole interaction columns replaced."""
    inter = tables["interactions.parquet"]
    for name, values in columns.items():
        idx = inter.schema.get_field_index(name)
        field = inter.schema.field(idx)
        inter = inter.set_column(idx, field, pa.array(values, field.type))
    return dict(tables, **{"interactions.parquet": inter})


def set_rows(tables: dict[str, pa.Table], column: str, rows: dict[int, Any]) -> dict[str, pa.Table]:
    values = tables["interactions.parquet"][column].to_pylist()
    for row, value in rows.items():
        values[row] = value
    return edit_interactions(tables, **{column: values})


# (column, {row: value}, extra overrides, message after "<raw>/interactions.parquet: ")
BAD_RAW = [
    (
        "rating",
        {7: 7.0},
        ["rating_range=[1,5]"],
        "column 'rating' row 7: expected a rating in [1, 5], got 7.0",
    ),
    ("rating", {5: float("nan")}, [], "column 'rating' row 5: expected a finite number, got nan"),
    (
        "rating",
        {3: float("inf")},
        ["rating_range=[1,5]"],
        "column 'rating' row 3: expected a finite number, got inf",
    ),
    (
        "text",
        {4: "   "},
        [],
        "column 'text' row 4: is empty; drop the review text or set it to null, got '   '",
    ),
    (
        "review_id",
        {6: "1_x", 9: "1_x"},
        [],
        "column 'review_id' row 9: repeats the id '1_x' of row 6; ids must be unique",
    ),
    ("user", {2: None}, [], "column 'user' is null in row 2; it must be set"),
]


@pytest.mark.parametrize(
    ("column", "rows", "extra", "message"),
    BAD_RAW,
    ids=[f"{c}{i}" for i, (c, *_) in enumerate(BAD_RAW)],
)
def test_bad_raw_row(
    column: str,
    rows: dict[int, Any],
    extra: list[str],
    message: str,
    tmp_path: Path,
    tiny_tables: dict[str, pa.Table],
    capsys: pytest.CaptureFixture[str],
) -> None:
    tables = set_rows(tiny_tables, column, rows)
    if column == "user":  # a null id needs a nullable field to be written at all
        inter = tables["interactions.parquet"]
        idx = inter.schema.get_field_index("user")
        users = tiny_tables["interactions.parquet"]["user"].to_pylist()
        users[2] = None
        tables["interactions.parquet"] = inter.set_column(idx, "user", pa.array(users, pa.string()))
    raw = write_raw(tmp_path / "raw", tables)
    err = fails([f"run_dir={tmp_path / 'run'}", f"raw_dir={raw}", *extra], capsys)
    assert err == f"dlrrec features build: error: {raw}/interactions.parquet: {message}"
    assert not (tmp_path / "run" / "features").exists()


def test_mistyped_optional_column(
    tmp_path: Path, tiny_tables: dict[str, pa.Table], capsys: pytest.CaptureFixture[str]
) -> None:
    inter = tiny_tables["interactions.parquet"]
    idx = inter.schema.get_field_index("text")
    bad = inter.set_column(idx, "text", pa.array(range(inter.num_rows), pa.int64()))
    raw = write_raw(tmp_path / "raw", dict(tiny_tables, **{"interactions.parquet": bad}))
    err = fails([f"run_dir={tmp_path / 'run'}", f"raw_dir={raw}"], capsys)
    assert err.endswith("interactions.parquet: column 'text' has type int64, expected string")


@pytest.mark.parametrize("name", ["interactions.parquet", "items.parquet", "users.parquet"])
def test_empty_file(
    name: str, tmp_path: Path, tiny_tables: dict[str, pa.Table], capsys: pytest.CaptureFixture[str]
) -> None:
    raw = write_raw(tmp_path / "raw", dict(tiny_tables, **{name: tiny_tables[name].slice(0, 0)}))
    err = fails([f"run_dir={tmp_path / 'run'}", f"raw_dir={raw}"], capsys)
    assert err == f"dlrrec features build: error: {raw}/{name}: the file is empty (no rows)"
    (raw / name).write_bytes(b"")
    err = fails([f"run_dir={tmp_path / 'run'}", f"raw_dir={raw}"], capsys)
    assert f"{raw}/{name}: not a readable Parquet file (" in err


def test_row_numbers_across_batches(tmp_path: Path, tiny_tables: dict[str, pa.Table]) -> None:
    n = tiny_tables["interactions.parquet"].num_rows
    assert n > 20
    raw = write_raw(tmp_path / "raw", set_rows(tiny_tables, "rating", {n - 2: 0.0}))
    for batch_rows in (1, 4, 7, n):
        with pytest.raises(DataError, match=rf"column 'rating' row {n - 2}: expected a rating in"):
            read_raw_reviews(raw, (1.0, 5.0), batch_rows=batch_rows)
    ids = tiny_tables["interactions.parquet"]["review_id"].to_pylist()
    raw = write_raw(tmp_path / "raw2", set_rows(tiny_tables, "review_id", {n - 1: ids[3]}))
    with pytest.raises(DataError, match=rf"row {n - 1}: repeats the id '{ids[3]}' of row 3;"):
        read_raw_reviews(raw, batch_rows=5)


def test_skip_drops_and_counts_bad_rows(
    tmp_path: Path, tiny_tables: dict[str, pa.Table], capsys: pytest.CaptureFixture[str]
) -> None:
    inter = tiny_tables["interactions.parquet"]
    n = inter.num_rows
    ids = inter["review_id"].to_pylist()
    ratings = inter["rating"].to_pylist()
    texts = inter["text"].to_pylist()
    ratings[1], ratings[8] = 9.0, float("nan")  # out of range, not finite
    texts[2], texts[8] = "", " \t"  # blank; row 8 counts once, as a rating problem
    texts[3] = "fine"
    ids[12] = ids[1]  # repeats a row that is dropped anyway: row 12 is the first good copy
    ids[15] = ids[4]  # a true duplicate of a good row
    ids[16] = ids[4]
    raw = write_raw(
        tmp_path / "raw",
        edit_interactions(tiny_tables, rating=ratings, text=texts, review_id=ids),
    )
    args = [f"raw_dir={raw}", "rating_range=[1,5]", "on_bad_rows=skip"]
    assert main([f"run_dir={tmp_path / 'run'}", *args]) == 0
    meta = json.loads((tmp_path / "run" / "features" / "_meta.json").read_text())
    assert meta["skipped_rows"] == {
        "policy": "skip",
        "rating_out_of_range": 2,
        "empty_text": 1,
        "duplicate_review_id": 2,
    }
    assert sum(meta["rows"].values()) == n - 5
    kept = read_raw_reviews(raw, (1.0, 5.0), "skip", batch_rows=3).interactions
    expect = [i for i in range(n) if i not in (1, 8, 2, 15, 16)]
    assert kept["review_id"].to_pylist() == [ids[i] for i in expect]
    assert kept["rating"].to_pylist() == [ratings[i] for i in expect]
    # The default policy names the first bad row instead.
    capsys.readouterr()
    err = fails([f"run_dir={tmp_path / 'run2'}", *args[:-1]], capsys)
    assert err.endswith("column 'rating' row 1: expected a rating in [1, 5], got 9.0")


def test_skip_every_row_is_an_error(
    tmp_path: Path, tiny_tables: dict[str, pa.Table], capsys: pytest.CaptureFixture[str]
) -> None:
    n = tiny_tables["interactions.parquet"].num_rows
    raw = write_raw(tmp_path / "raw", edit_interactions(tiny_tables, rating=[0.0] * n))
    err = fails(
        [f"run_dir={tmp_path / 'run'}", f"raw_dir={raw}", "rating_range=[1,5]", "on_bad_rows=skip"],
        capsys,
    )
    assert "on_bad_rows=skip dropped every row" in err and "interactions.parquet" in err


def _yelp_with_bad_rows(tmp_path: Path) -> Path:
    d = Path(shutil.copytree(FIXTURES / "yelp", tmp_path / "yelp"))
    lines = (d / "review.json").read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    recs[3]["stars"] = 6
    recs[4]["text"] = "  "
    recs[5]["review_id"] = recs[1]["review_id"]
    (d / "review.json").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return d


def test_skip_in_a_review_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = _yelp_with_bad_rows(tmp_path)
    raw = read_source("yelp", d, on_bad_rows="skip")
    assert raw.skipped == {"rating_out_of_range": 1, "empty_text": 1, "duplicate_review_id": 1}
    assert raw.interactions.num_rows == 12 - 3
    assert "r004" not in raw.interactions["review_id"].to_pylist()
    assert (
        main([f"run_dir={tmp_path / 'run'}", f"raw_dir={d}", "source=yelp", "on_bad_rows=skip"])
        == 0
    )
    meta = json.loads((tmp_path / "run" / "features" / "_meta.json").read_text())
    assert meta["skipped_rows"]["empty_text"] == 1 and sum(meta["rows"].values()) == 9
    capsys.readouterr()
    err = fails([f"run_dir={tmp_path / 'run2'}", f"raw_dir={d}", "source=yelp"], capsys)
    assert err.endswith(
        "review.json: column 'stars' row 3 (line 4): expected a rating in [1, 5], got 6.0"
    )


def test_bad_on_bad_rows_value(
    tiny_raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = fails([f"run_dir={tmp_path}", f"raw_dir={tiny_raw}", "on_bad_rows=drop"], capsys)
    assert "features.on_bad_rows: expected one of error|skip, got 'drop'" in err


def test_repeated_rows_matches_a_loop() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        values = [f"r{v}" for v in rng.integers(0, 30, size=int(rng.integers(1, 60)))]
        ignore = rng.random(len(values)) < 0.2
        seen: set[str] = set()
        expect = []
        for v, ign in zip(values, ignore):
            expect.append(not ign and v in seen)
            if not ign:
                seen.add(v)
        chunked = pa.chunked_array([values[:7], values[7:]], pa.string())
        assert repeated_rows(chunked, ignore).tolist() == expect
        assert repeated_rows(pa.array(values)).tolist() == [
            v in values[:i] for i, v in enumerate(values)
        ]
    assert repeated_rows(pa.array(["a", None, "b", None, "a"])).tolist() == [0, 0, 0, 0, 1]


def test_damaged_embedding_cache(
    tmp_path: Path, tiny_raw: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from features import text
    from features.embed_cache import EmbeddingCache, model_id, text_keys

    cache_dir = tmp_path / "cache"
    assert (
        main([f"run_dir={tmp_path / 'run'}", f"raw_dir={tiny_raw}", f"embed_cache_dir={cache_dir}"])
        == 0
    )
    items = pq.read_table(tiny_raw / "items.parquet").to_pylist()
    first = text.item_text(items[0]["title"], items[0]["categories"], items[0]["year"])
    key = text_keys(model_id(text.model_path("")), [first])[0]
    capsys.readouterr()
    cache = EmbeddingCache(cache_dir / "embeddings.sqlite", 384)
    cache.put([key], np.full((1, 384), np.nan, dtype=np.float32))
    cache.close()
    with pytest.raises(SystemExit) as exc:  # after the progress lines, one error line
        main(
            [f"run_dir={tmp_path / 'run2'}", f"raw_dir={tiny_raw}", f"embed_cache_dir={cache_dir}"]
        )
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        f"dlrrec features build: error: {cache_dir}/embeddings.sqlite: column 'v' of key "
        f"{key.hex()} holds NaN/inf; the cache is damaged, delete the file (it is rebuilt on "
        "the next run)"
    )
    assert not (tmp_path / "run2" / "features").exists()


def test_value_that_does_not_fit_the_schema(
    tmp_path: Path, tiny_tables: dict[str, pa.Table], capsys: pytest.CaptureFixture[str]
) -> None:
    items = tiny_tables["items.parquet"]
    years = items["year"].to_pylist()
    years[3] = 10**12
    idx = items.schema.get_field_index("year")
    bad = items.set_column(idx, "year", pa.array(years, pa.int64()))
    raw = write_raw(tmp_path / "raw", dict(tiny_tables, **{"items.parquet": bad}))
    err = fails([f"run_dir={tmp_path / 'run'}", f"raw_dir={raw}"], capsys)
    assert f"{raw}/items.parquet: column 'year' rows 0..10: a value does not fit int32" in err


SOURCE_KW: dict[str, dict[str, Any]] = {
    "yelp": {},
    "google_local": {},
    "amazon2023": {},
    "movielens_udata": {},
    "generic": {
        "files": {"reviews": "reviews.csv", "items": "products.jsonl"},
        "columns": {
            "user": "customer",
            "item": "product",
            "rating": "stars",
            "timestamp": "reviewed_at",
            "text": "body",
            "title": "name",
            "categories": "tags",
        },
    },
}


@pytest.mark.parametrize("chunk", [1, 2, 5])
def test_review_sources_read_in_chunks(
    chunk: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from features.sources import records

    whole = {s: read_source(s, FIXTURES / s, **kw) for s, kw in SOURCE_KW.items()}
    d = _yelp_with_bad_rows(tmp_path)
    skipped_whole = read_source("yelp", d, on_bad_rows="skip")
    monkeypatch.setattr(records, "CHUNK_ROWS", chunk)
    for source, kw in SOURCE_KW.items():
        raw = read_source(source, FIXTURES / source, **kw)
        for part in ("interactions", "items", "users"):
            assert getattr(raw, part).equals(getattr(whole[source], part)), (source, part)
    # Errors in later chunks name the file row and line; duplicates are found across chunks.
    with pytest.raises(DataError, match=r"'stars' row 3 \(line 4\): expected a rating in \[1, 5\]"):
        read_source("yelp", d)
    skipped = read_source("yelp", d, on_bad_rows="skip")
    assert skipped.skipped == skipped_whole.skipped
    assert skipped.interactions.equals(skipped_whole.interactions)
    lines = (FIXTURES / "yelp" / "review.json").read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    recs[9]["review_id"] = recs[2]["review_id"]
    (d / "review.json").write_text("".join(json.dumps(r) + "\n" for r in recs))
    with pytest.raises(
        DataError,
        match=r"'review_id' row 9 \(line 10\): repeats the id 'r003' of row 2 \(line 3\); ids must",
    ):
        read_source("yelp", d)


def test_dictionary_encoded_columns_are_read(
    tmp_path: Path, tiny_tables: dict[str, pa.Table]
) -> None:
    users = tiny_tables["users.parquet"]
    idx = users.schema.get_field_index("occupation")
    encoded = users.set_column(idx, "occupation", users["occupation"].dictionary_encode())
    raw = write_raw(tmp_path / "raw", dict(tiny_tables, **{"users.parquet": encoded}))
    got = read_raw_reviews(raw).users
    assert got["occupation"].type == pa.string()
    assert got["occupation"].to_pylist() == users["occupation"].to_pylist()
