"""Parquet I/O of the features stage: read and check raw reviews, write the outputs.

Every problem with an input table is a one-line `DataError` that names the file and
the column (and the row or value where there is one), so a user can fix the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.schema import RAW_FILES, REQUIRED_COLUMNS
from launch.artifacts import sha256_file
from launch.config import DataError


@dataclass
class RawReviews:
    """The three raw-reviews tables, cast to the schemas in features/schema.py.

    Only the columns `dlrrec features build` reads are kept.
    """

    interactions: pa.Table
    items: pa.Table
    users: pa.Table


def raw_paths(raw_dir: str | Path) -> dict[str, Path]:
    """{file name: path} of the raw tables; fails naming the first missing file."""
    raw_dir = Path(raw_dir)
    paths = {name: raw_dir / name for name in RAW_FILES}
    for path in paths.values():
        if not path.is_file():
            raise DataError(
                f"{path}: no such file; raw_dir must hold {', '.join(RAW_FILES)} "
                "(run `dlrrec data fetch movielens-100k --out DIR` and pass raw_dir=DIR)"
            )
    return paths


def raw_input_hashes(raw_dir: str | Path) -> dict[str, str]:
    """{file name: sha256} of the raw tables, for `_meta.json` and the fingerprint."""
    return {name: sha256_file(path) for name, path in raw_paths(raw_dir).items()}


def _accepts(actual: pa.DataType, expected: pa.DataType) -> bool:
    """Whether a column of type `actual` may be cast to `expected` without surprises."""
    if pa.types.is_string(expected):
        return pa.types.is_string(actual) or pa.types.is_large_string(actual)
    if pa.types.is_floating(expected):
        return pa.types.is_integer(actual) or pa.types.is_floating(actual)
    if pa.types.is_integer(expected):
        return pa.types.is_integer(actual)
    if pa.types.is_list(expected):
        return (pa.types.is_list(actual) or pa.types.is_large_list(actual)) and _accepts(
            actual.value_type, expected.value_type
        )
    return actual == expected


def _read_table(path: Path) -> pa.Table:
    name = path.name
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
    schema = RAW_FILES[name]
    columns = []
    for col in REQUIRED_COLUMNS[name]:
        if col not in table.column_names:
            raise DataError(
                f"{path}: missing column {col!r} (required: {', '.join(REQUIRED_COLUMNS[name])})"
            )
        want = schema.field(col)
        got = table.schema.field(col).type
        if not _accepts(got, want.type):
            raise DataError(f"{path}: column {col!r} has type {got}, expected {want.type}")
        array = table[col]
        if not want.nullable and array.null_count:
            row = pc.index(pc.is_null(array), True).as_py()
            raise DataError(f"{path}: column {col!r} is null in row {row}; it must be set")
        columns.append(pc.cast(array, want.type))
    fields = [schema.field(c) for c in REQUIRED_COLUMNS[name]]
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))


def _check_unique(path: Path, table: pa.Table, col: str) -> None:
    if pc.count_distinct(table[col]).as_py() != table.num_rows:
        counts = pc.value_counts(table[col])
        dup = counts.filter(pc.greater(counts.field("counts"), 1))[0]["values"].as_py()
        raise DataError(f"{path}: column {col!r} repeats the id {dup!r}; ids must be unique")


def _check_known(
    path: Path, table: pa.Table, col: str, known: pa.ChunkedArray, where: Path
) -> None:
    found = pc.is_in(table[col], value_set=known.combine_chunks())
    if not pc.all(found).as_py():
        row = pc.index(found, False).as_py()
        value = table[col][row].as_py()
        raise DataError(
            f"{path}: column {col!r} row {row} names {value!r}, which is not in {where}"
        )


def read_raw_reviews(raw_dir: str | Path) -> RawReviews:
    """Read and check `raw_dir/{interactions,items,users}.parquet`.

    Checks: files exist and are Parquet; required columns exist with castable types;
    ids are set, entity ids are unique, every interaction names a known user and
    item; ratings are finite; at least one interaction.

    Raises:
        DataError: naming the file, the column and the row or value.
    """
    paths = raw_paths(raw_dir)
    tables = {name: _read_table(path) for name, path in paths.items()}
    inter, items, users = (
        tables[n] for n in ("interactions.parquet", "items.parquet", "users.parquet")
    )
    p_inter, p_items, p_users = (
        paths[n] for n in ("interactions.parquet", "items.parquet", "users.parquet")
    )
    if inter.num_rows == 0:
        raise DataError(f"{p_inter}: has no rows")
    finite = pc.is_finite(inter["rating"])
    if not pc.all(finite).as_py():
        row = pc.index(finite, False).as_py()
        raise DataError(f"{p_inter}: column 'rating' is not a finite number in row {row}")
    _check_unique(p_items, items, "item")
    _check_unique(p_users, users, "user")
    _check_known(p_inter, inter, "user", users["user"], p_users)
    _check_known(p_inter, inter, "item", items["item"], p_items)
    return RawReviews(interactions=inter, items=items, users=users)


def write_table(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def write_examples(stage_dir: Path, split: str, table: pa.Table) -> Path:
    """`stage_dir/examples/SPLIT/part-00000.parquet` (one part: 100K rows is small)."""
    path = stage_dir / "examples" / split / "part-00000.parquet"
    write_table(path, table)
    return path


def write_entities(stage_dir: Path, users: pa.Table, items: pa.Table) -> None:
    write_table(stage_dir / "entities" / "users.parquet", users)
    write_table(stage_dir / "entities" / "items.parquet", items)
