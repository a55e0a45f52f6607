"""Parquet I/O of the features stage: read and check raw reviews, write the outputs.

Every problem with an input table is a one-line `DataError` that names the file and
the column (and the row or value where there is one), so a user can fix the table.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dlrrec.arrow import parquet_batches
from dlrrec.artifacts import sha256_file
from dlrrec.config import DataError
from features.bad_rows import BadRows, Policy, first_repeat, no_skips, repeated_rows, resolve
from features.schema import OPTIONAL_COLUMNS, RAW_FILES, REQUIRED_COLUMNS


@dataclass
class RawReviews:
    """The three raw-reviews tables, cast to the schemas in features/schema.py.

    Only the raw schema's columns are kept (required ones, plus the optional ones a
    file has); `skipped` counts the bad interaction rows dropped by `on_bad_rows: skip`.
    """

    interactions: pa.Table
    items: pa.Table
    users: pa.Table
    skipped: dict[str, int] = field(default_factory=no_skips)


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
    if pa.types.is_dictionary(actual):  # pandas `category` columns arrive dictionary-encoded
        return _accepts(actual.value_type, expected)
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


# Rows per pyarrow batch of the streaming scan: big enough that per-batch overhead
# vanishes, small enough that a batch's temporaries stay a few hundred MB at most.
SCAN_BATCH_ROWS = 1 << 18


def _fields_to_read(path: Path, name: str, schema: pa.Schema) -> list[pa.Field]:
    """The raw-schema fields to read from a file: every required column (it must be
    there, with a castable type) and every optional column that is there."""
    raw = RAW_FILES[name]
    for col in REQUIRED_COLUMNS[name]:
        if col not in schema.names:
            raise DataError(
                f"{path}: missing column {col!r} (required: {', '.join(REQUIRED_COLUMNS[name])})"
            )
    optional = [f for f in raw if f.name not in REQUIRED_COLUMNS[name]]
    optional += list(OPTIONAL_COLUMNS[name])
    fields = [raw.field(c) for c in REQUIRED_COLUMNS[name]]
    fields += [f for f in optional if f.name in schema.names]
    for want in fields:
        got = schema.field(want.name).type
        if not _accepts(got, want.type):
            raise DataError(f"{path}: column {want.name!r} has type {got}, expected {want.type}")
    return fields


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _row_findings(
    path: Path, batch: pa.RecordBatch, offset: int, rating_range: tuple[float, float] | None
) -> list[BadRows]:
    """Bad interaction rows of one batch (ratings, blank texts); rows numbered from the file start."""
    out = []
    rating = batch.column("rating")
    ok = pc.is_finite(rating)
    if rating_range is not None:
        lo, hi = rating_range
        ok = pc.and_(ok, pc.and_(pc.greater_equal(rating, lo), pc.less_equal(rating, hi)))
    bad = ~np.asarray(ok.to_numpy(zero_copy_only=False), dtype=bool)
    if bad.any():
        i = int(np.argmax(bad))
        value = rating[i].as_py()
        what = (
            f"expected a rating in [{rating_range[0]:g}, {rating_range[1]:g}]"
            if rating_range is not None and np.isfinite(value)
            else "expected a finite number"
        )
        out.append(
            BadRows(
                "rating_out_of_range",
                bad,
                f"{path}: column 'rating' row {offset + i}: {what}, got {_shown(value)}",
            )
        )
    if "text" in batch.schema.names:
        text = batch.column("text")
        blank = pc.fill_null(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(text)), 0), False)
        mask = np.asarray(blank.to_numpy(zero_copy_only=False), dtype=bool)
        if mask.any():
            i = int(np.argmax(mask))
            out.append(
                BadRows(
                    "empty_text",
                    mask,
                    f"{path}: column 'text' row {offset + i}: is empty; drop the review text "
                    f"or set it to null, got {_shown(text[i].as_py())}",
                )
            )
    return out


def open_scan(path: Path) -> tuple[pq.ParquetFile, pa.Schema]:
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
    if pf.metadata.num_rows == 0:
        raise DataError(f"{path}: the file is empty (no rows)")
    return pf, pa.schema(_fields_to_read(path, path.name, pf.schema_arrow))


def _checked(path: Path, batch: pa.RecordBatch, schema: pa.Schema, offset: int) -> pa.RecordBatch:
    arrays = []
    for want in schema:
        array = batch.column(want.name)
        if not want.nullable and array.null_count:
            row = offset + pc.index(pc.is_null(array), True).as_py()
            raise DataError(f"{path}: column {want.name!r} is null in row {row}; it must be set")
        try:
            arrays.append(pc.cast(array, want.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise DataError(
                f"{path}: column {want.name!r} rows {offset}..{offset + batch.num_rows - 1}: "
                f"a value does not fit {want.type} ({str(e).splitlines()[0]})"
            ) from None
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def scan_batches(
    path: Path,
    rating_range: tuple[float, float] | None = None,
    on_bad_rows: Policy = "error",
    batch_rows: int = SCAN_BATCH_ROWS,
    skipped: dict[str, int] | None = None,
) -> Iterator[pa.RecordBatch]:
    """One raw-reviews Parquet file, batch by batch, each checked before the next is read.

    Only the schema's columns are read (a review dump's other columns never load) and
    each batch is cast to the raw schema, so a bad row fails fast and nothing but one
    batch is held.  Interaction rows get the bad-row checks of features/bad_rows.py;
    with `skip` the dropped rows are added to `skipped` (repeated review ids are
    `repeated_review_rows`' job: they need the whole file).

    Raises:
        DataError: naming the file, the column and the first bad row.
    """
    schema = open_scan(path)[1]
    offset = 0
    for batch in parquet_batches(path, schema.names, batch_rows):
        checked = _checked(path, batch, schema, offset)
        if path.name == "interactions.parquet":
            findings = _row_findings(path, checked, offset, rating_range)
            keep, counts = resolve(findings, checked.num_rows, on_bad_rows)
            if keep is not None:
                checked = checked.filter(pa.array(keep))
                for reason, count in counts.items():
                    if skipped is not None:
                        skipped[reason] += count
        offset += batch.num_rows
        yield checked


def scan_table(
    path: Path,
    rating_range: tuple[float, float] | None = None,
    on_bad_rows: Policy = "error",
    batch_rows: int = SCAN_BATCH_ROWS,
) -> tuple[pa.Table, dict[str, int]]:
    """The whole file through `scan_batches` (entity tables, and the in-memory sources).

    Returns:
        (the table with the raw schema's columns, {reason: rows skipped}).
    """
    skipped = no_skips()
    schema = open_scan(path)[1]
    batches = list(scan_batches(path, rating_range, on_bad_rows, batch_rows, skipped))
    table = pa.Table.from_batches(batches, schema=schema)
    if path.name == "interactions.parquet" and "review_id" in schema.names:
        table, skipped["duplicate_review_id"] = _drop_repeated_ids(path, table, on_bad_rows)
    if table.num_rows == 0:
        raise DataError(f"{path}: on_bad_rows=skip dropped every row ({skipped})")
    return table, skipped


def _drop_repeated_ids(path: Path, table: pa.Table, on_bad_rows: Policy) -> tuple[pa.Table, int]:
    ids = table["review_id"]
    mask = repeated_rows(ids)
    if not mask.any():
        return table, 0
    row, earlier, value = first_repeat(ids, mask)
    message = (
        f"{path}: column 'review_id' row {row}: repeats the id {_shown(value)} of row "
        f"{earlier}; ids must be unique"
    )
    keep, counts = resolve([BadRows("duplicate_review_id", mask, message)], len(mask), on_bad_rows)
    assert keep is not None
    return table.filter(pa.array(keep)), counts["duplicate_review_id"]


def check_unique(path: Path, table: pa.Table, col: str) -> None:
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
            f"{path}: column {col!r} row {row}: names {value!r}, which is not in {where}"
        )


def read_raw_reviews(
    raw_dir: str | Path,
    rating_range: tuple[float, float] | None = None,
    on_bad_rows: Policy = "error",
    batch_rows: int = SCAN_BATCH_ROWS,
) -> RawReviews:
    """Read and check `raw_dir/{interactions,items,users}.parquet`, streaming (`scan_table`).

    Checks: files exist, are Parquet and are not empty; required columns exist with
    castable types (optional ones are type-checked when present); ids are set,
    entity ids are unique, every interaction names a known user and item.  Bad
    interaction rows (features/bad_rows.py): a rating that is not finite or outside
    `rating_range`, a blank text, a repeated review id; `on_bad_rows` says whether
    they fail or are dropped (counted in `RawReviews.skipped`).

    Raises:
        DataError: naming the file, the column and the row or value.
    """
    paths = raw_paths(raw_dir)
    p_inter, p_items, p_users = (
        paths[n] for n in ("interactions.parquet", "items.parquet", "users.parquet")
    )
    inter, skipped = scan_table(p_inter, rating_range, on_bad_rows, batch_rows)
    items, _ = scan_table(p_items, batch_rows=batch_rows)
    users, _ = scan_table(p_users, batch_rows=batch_rows)
    check_unique(p_items, items, "item")
    check_unique(p_users, users, "user")
    _check_known(p_inter, inter, "user", users["user"], p_users)
    _check_known(p_inter, inter, "item", items["item"], p_items)
    return RawReviews(interactions=inter, items=items, users=users, skipped=skipped)


def write_table(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def vector_writer(path: Path | str, schema: pa.Schema, id_col: str) -> pq.ParquetWriter:
    """A writer for tables of content vectors: float16 noise neither dictionary-encodes
    nor compresses (trying costs 4x the write time), and readers only ever filter on
    the id column's statistics."""
    return pq.ParquetWriter(
        path, schema, use_dictionary=False, compression="none", write_statistics=[id_col]
    )


PART_ROWS = 1_048_576  # rows per examples part file
ROW_GROUP_ROWS = 8192  # rows per row group: the trainer's read (and shuffle) unit


class ExamplesWriter:
    """`stage_dir/examples/SPLIT/part-NNNNN.parquet`, appended chunk by chunk: parts of at
    most `PART_ROWS` rows in row groups of `ROW_GROUP_ROWS` (the trainer reads one row
    group at a time).  Holds less than one row group between writes."""

    def __init__(self, stage_dir: Path, split: str, schema: pa.Schema) -> None:
        self.folder = stage_dir / "examples" / split
        self.folder.mkdir(parents=True, exist_ok=True)
        self.schema = schema
        self.parts = 0
        self._writer: pq.ParquetWriter | None = None
        self._in_part = 0
        self._held: list[pa.Table] = []
        self._held_rows = 0

    def _emit(self, table: pa.Table) -> None:
        while table.num_rows:
            if self._writer is None or self._in_part == PART_ROWS:
                if self._writer is not None:
                    self._writer.close()
                self._writer = pq.ParquetWriter(
                    self.folder / f"part-{self.parts:05d}.parquet", self.schema
                )
                self.parts, self._in_part = self.parts + 1, 0
            n = min(table.num_rows, PART_ROWS - self._in_part)
            self._writer.write_table(table.slice(0, n), row_group_size=ROW_GROUP_ROWS)
            self._in_part += n
            table = table.slice(n)

    def write(self, table: pa.Table) -> None:
        self._held.append(table)
        self._held_rows += table.num_rows
        if self._held_rows >= ROW_GROUP_ROWS:
            held = pa.concat_tables(self._held).combine_chunks()
            whole = held.num_rows - held.num_rows % ROW_GROUP_ROWS
            self._emit(held.slice(0, whole))
            self._held, self._held_rows = [held.slice(whole)], held.num_rows - whole

    def close(self) -> int:
        """Write what is held (an empty split gets one empty part); returns the parts."""
        if self._held_rows:
            self._emit(pa.concat_tables(self._held))
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.folder / "part-00000.parquet", self.schema)
            self.parts = 1
        self._writer.close()
        return self.parts


def write_examples(stage_dir: Path, split: str, table: pa.Table) -> int:
    """A whole split through `ExamplesWriter`; returns the number of parts."""
    writer = ExamplesWriter(stage_dir, split, table.schema)
    writer.write(table)
    return writer.close()


def write_train_counts(stage_dir: Path, user_rows: np.ndarray, item_rows: np.ndarray) -> None:
    """`counts/{users,items}.parquet`: each entity's number of training rows, so the
    trainer gets what it needs over all rows (the InfoNCE sampler's marginal, which ids
    are seen) without any rank reading every row."""
    for entity, rows in (("user", user_rows), ("item", item_rows)):
        ids = pa.array(np.arange(rows.size, dtype=np.int64))
        table = pa.table({f"{entity}_id": ids, "train_rows": pa.array(rows.astype(np.int64))})
        write_table(stage_dir / "counts" / f"{entity}s.parquet", table)
