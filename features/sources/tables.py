"""Assemble the raw-reviews tables (features/schema.py) from an adapter's columns.

Conversions plus the checks every source shares: unique review ids, ratings in range,
non-blank texts, reviews that name known items.  The checked interactions are staged
chunk by chunk in a Parquet file of the raw schema (`stage_reviews`), which the build
then streams as it streams `source: raw`, so no step holds more than one chunk of
reviews.  Review sources know nothing about users beyond their id, so the user table
has null demographics (they encode as id 0).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dlrrec.arrow import parquet_batches
from dlrrec.config import DataError
from features.bad_rows import BadRows, Policy, no_skips, resolve
from features.io import RawReviews
from features.rowindex import drop_rows, repeated_ids
from features.schema import OPTIONAL_COLUMNS, RAW_INTERACTIONS, RAW_ITEMS, RAW_USERS
from features.sources.records import (
    Records,
    blank_rows,
    check_known,
    check_unique,
    out_of_range_rows,
)


@dataclass
class ReviewColumns:
    """One list per raw-interactions column, all of the same length (row order kept)."""

    user: list[str]
    item: list[str]
    rating: list[float]
    timestamp: list[int]
    review_id: list[str]
    text: list[str | None] | None = None
    image_urls: list[list[str] | None] | None = None
    # The text field as the source wrote it, when `text` is built from it (the
    # blank-text check looks at this one).
    source_text: list[str | None] | None = None


@dataclass
class ItemColumns:
    """One list per raw-items column; `None` for a column the source does not have."""

    item: list[str]
    title: list[str | None] | None = None
    categories: list[list[str] | None] | None = None
    year: list[int | None] | None = None
    extras: dict[str, list[Any]] = field(default_factory=dict)


def _schema(base: pa.Schema, file: str, extras: list[str]) -> pa.Schema:
    optional = {f.name: f for f in OPTIONAL_COLUMNS[file]}
    return pa.schema(list(base) + [optional[name] for name in extras])


def interactions_table(cols: ReviewColumns) -> pa.Table:
    n = len(cols.user)
    data: dict[str, list[Any]] = {
        "user": cols.user,
        "item": cols.item,
        "rating": cols.rating,
        "timestamp": cols.timestamp,
        "text": cols.text if cols.text is not None else [None] * n,
        "review_id": cols.review_id,
    }
    extras = []
    if cols.image_urls is not None:
        data["image_urls"] = cols.image_urls
        extras.append("image_urls")
    return pa.Table.from_pydict(
        data, schema=_schema(RAW_INTERACTIONS, "interactions.parquet", extras)
    )


def items_table(cols: ItemColumns) -> pa.Table:
    n = len(cols.item)
    data: dict[str, list[Any]] = {
        "item": cols.item,
        "title": cols.title if cols.title is not None else [None] * n,
        "categories": cols.categories if cols.categories is not None else [None] * n,
        "year": cols.year if cols.year is not None else [None] * n,
    }
    names = [f.name for f in OPTIONAL_COLUMNS["items.parquet"] if f.name in cols.extras]
    data.update({name: cols.extras[name] for name in names})
    return pa.Table.from_pydict(data, schema=_schema(RAW_ITEMS, "items.parquet", names))


def users_table(user_ids: pa.Array | pa.ChunkedArray) -> pa.Table:
    """The distinct user ids, sorted, with null demographics."""
    uniq = pc.unique(user_ids)
    uniq = uniq.take(pc.array_sort_indices(uniq))
    n = len(uniq)
    return pa.Table.from_arrays(
        [pc.cast(uniq, pa.string())] + [pa.nulls(n, f.type) for f in list(RAW_USERS)[1:]],
        schema=RAW_USERS,
    )


ReviewChunks = Iterable[tuple[Records, ReviewColumns]]
# Where each staged review came from, for the repeated-id message: its file row and
# (line-based files) its line.
SOURCE_ROW, SOURCE_LINE = "source_row", "source_line"


@dataclass
class StagedReviews:
    """A review source's checked interactions, staged chunk by chunk in a Parquet file of
    the raw-interactions schema (plus `SOURCE_ROW`/`SOURCE_LINE`), and its entity tables.

    `drop` holds the staged rows (sorted) whose review id repeats an earlier row's, left
    out by `batches` (they are only ever kept in the file with `on_bad_rows: skip`).
    """

    path: Path
    schema: pa.Schema  # the raw-interactions columns of the staged file
    drop: np.ndarray
    items: pa.Table
    users: pa.Table
    skipped: dict[str, int]

    def batches(self, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        """The kept interactions in source order, one Parquet batch at a time."""
        return drop_rows(parquet_batches(self.path, columns or self.schema.names), self.drop)

    def reviews(self) -> RawReviews:
        """Every kept interaction in memory (the llm/images steps, and small inputs)."""
        inter = pa.Table.from_batches(list(self.batches()), schema=self.schema)
        return RawReviews(inter, self.items, self.users, self.skipped)


def stage_reviews(
    reviews: ReviewChunks,
    keys: dict[str, str],
    rating_range: tuple[float, float],
    items: tuple[Records, ItemColumns] | None,
    on_bad_rows: Policy,
    work: Path,
) -> StagedReviews:
    """Check the reviews one chunk at a time and stage them in `work/reviews.parquet`.

    `reviews` yields (a chunk of records, its columns); only one chunk is ever held.
    `keys` maps review_id/rating/item/text/item_key to the source's field names.
    Without an item file, the items are the distinct reviewed ids with no content.
    Bad review rows (features/bad_rows.py: a rating out of range, a blank text, a
    repeated review id) fail or are dropped, as `on_bad_rows` says; a repeated id is
    found across chunks once all are staged (rowindex.py `repeated_ids`, on disk).

    Raises:
        DataError: a bad row (with `error`), an unknown item, a repeated item id, no
            rows left; naming the file, the source column and the row.
    """
    known: set[str] | None = None
    item_path = None
    if items is not None:
        item_recs, item_cols = items
        check_unique(item_recs, keys["item_key"], item_cols.item)
        known, item_path = set(item_cols.item), Path(item_recs.path)
    work.mkdir(parents=True, exist_ok=True)
    path, skipped, source = work / "reviews.parquet", no_skips(), Path()
    writer: pq.ParquetWriter | None = None
    try:
        for recs, cols in reviews:
            source = recs.path
            table, counts = _checked_chunk(recs, cols, keys, rating_range, on_bad_rows,
                                           (known, item_path))  # fmt: skip
            skipped = {r: skipped[r] + counts[r] for r in skipped}
            writer = writer or pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
    schema = pq.read_schema(path)
    schema = pa.schema([f for f in schema if f.name not in (SOURCE_ROW, SOURCE_LINE)])
    drop, skipped["duplicate_review_id"] = _repeated_ids(path, source, keys, on_bad_rows, work)
    if pq.ParquetFile(path).metadata.num_rows == len(drop):
        raise DataError(f"{source}: on_bad_rows=skip dropped every row ({skipped})")
    users, item_ids = Distinct(), Distinct()
    # per entity: only the distinct ids are held
    for batch in drop_rows(parquet_batches(path, ["user", "item"]), drop):
        users.add(batch.column(0))
        item_ids.add(batch.column(1))
    if items is None:
        item_cols = ItemColumns(item=sorted(item_ids.values().to_pylist()))
    return StagedReviews(
        path, schema, drop, items_table(item_cols), users_table(users.values()), skipped
    )


def _checked_chunk(
    recs: Records,
    cols: ReviewColumns,
    keys: dict[str, str],
    rating_range: tuple[float, float],
    on_bad_rows: Policy,
    known: tuple[set[str] | None, Path | None],
) -> tuple[pa.Table, dict[str, int]]:
    """One chunk's kept reviews as a staged table, and its bad rows per reason."""
    text = cols.source_text if cols.source_text is not None else cols.text
    found = [out_of_range_rows(recs, keys["rating"], cols.rating, *rating_range)]
    if text is not None:
        found.append(blank_rows(recs, keys.get("text", "text"), text))
    keep, counts = resolve(found, len(cols.user), on_bad_rows)
    if known[0] is not None and known[1] is not None:
        check_known(recs, keys["item"], cols.item, known[0], known[1], keep)
    kept = np.arange(len(cols.user)) if keep is None else np.nonzero(keep)[0]
    if keep is not None:
        cols = _take_rows(cols, kept)
    lines = (
        pa.array(np.asarray(recs.lines, dtype=np.int64)[kept])
        if recs.lines is not None
        else pa.nulls(len(kept), pa.int64())
    )
    table = interactions_table(cols).append_column(SOURCE_ROW, pa.array(recs.start + kept))
    return table.append_column(SOURCE_LINE, lines), counts


def _repeated_ids(
    path: Path, source: Path, keys: dict[str, str], on_bad_rows: Policy, work: Path
) -> tuple[np.ndarray, int]:
    """Staged rows (sorted) whose review id repeats an earlier row's, and how many; with
    `error`, the first one fails naming its source row and line and the earlier one's."""
    ids = (b.column(0) for b in parquet_batches(path, ["review_id"]))
    drop, first = repeated_ids(ids, pq.ParquetFile(path).metadata.num_rows, work / "review-ids")
    if first is None:
        return drop, 0
    row, earlier = _where(path, [first[0], first[1]])
    message = (
        f"{source}: column {keys['review_id']!r} {row}: repeats the id {first[2]!r} of "
        f"{earlier}; ids must be unique"
    )
    resolve([BadRows("duplicate_review_id", np.ones(1, dtype=bool), message)], 1, on_bad_rows)
    return drop, len(drop)


def _where(path: Path, seqs: list[int]) -> list[str]:
    """`row R (line L)` in the source file of each staged row in `seqs`."""
    found: dict[int, str] = {}
    seq = 0
    for batch in parquet_batches(path, [SOURCE_ROW, SOURCE_LINE]):
        for s in seqs:
            if seq <= s < seq + batch.num_rows:
                row, line = (batch.column(c)[s - seq].as_py() for c in (0, 1))
                found[s] = f"row {row}" + (f" (line {line})" if line is not None else "")
        seq += batch.num_rows
    return [found[s] for s in seqs]


class Distinct:
    """The distinct values of a stream of string chunks, holding only distinct values
    (the unmerged ones are merged whenever they outnumber the merged ones)."""

    def __init__(self) -> None:
        self.merged = pa.array([], pa.string())
        self.pending: list[pa.Array] = []
        self.n = 0

    def add(self, chunk: pa.Array) -> None:
        self.pending.append(pc.unique(chunk))
        self.n += len(self.pending[-1])
        if self.n > max(len(self.merged), 1 << 16):
            self.merged, self.pending, self.n = self.values(), [], 0

    def values(self) -> pa.Array:
        return pc.unique(pa.chunked_array([self.merged, *self.pending], pa.string()))


def _take_rows(cols: ReviewColumns, rows: np.ndarray) -> ReviewColumns:
    def take(values: list[Any] | None) -> list[Any] | None:
        return None if values is None else [values[i] for i in rows]

    return ReviewColumns(
        user=[cols.user[i] for i in rows],
        item=[cols.item[i] for i in rows],
        rating=[cols.rating[i] for i in rows],
        timestamp=[cols.timestamp[i] for i in rows],
        review_id=[cols.review_id[i] for i in rows],
        text=take(cols.text),
        image_urls=take(cols.image_urls),
    )
