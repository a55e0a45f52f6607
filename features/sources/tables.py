"""Assemble the raw-reviews tables (features/schema.py) from an adapter's columns.

Pure conversions plus the checks every source shares: unique review ids, ratings in
range, non-blank texts, reviews that name known items.  Review sources know nothing about users
beyond their id, so the user table has null demographics (they encode as id 0).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dlrrec.config import DataError
from features.bad_rows import BadRows, Policy, first_repeat, no_skips, repeated_rows, resolve
from features.io import RawReviews
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


def raw_reviews(
    reviews: ReviewChunks,
    keys: dict[str, str],
    rating_range: tuple[float, float],
    items: tuple[Records, ItemColumns] | None,
    on_bad_rows: Policy = "error",
) -> RawReviews:
    """Check and assemble, one chunk of reviews at a time.

    `reviews` yields (a chunk of records, its columns), so a big review file is held
    as Arrow tables, never all at once as Python objects.  `keys` maps
    review_id/rating/item/text/item_key to the source's field names.  Without an
    item file, the items are the distinct reviewed ids with no content.  Bad review
    rows (features/bad_rows.py: a rating out of range, a blank text, a repeated
    review id) fail or are dropped, as `on_bad_rows` says; a repeated id is found
    across chunks once all are read.

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
    skipped = no_skips()
    tables: list[pa.Table] = []
    rows: list[np.ndarray] = []  # file row of every kept review
    lines: list[np.ndarray] | None = []  # and its line, for the duplicate message
    path = None
    for recs, cols in reviews:
        path = recs.path
        text = cols.source_text if cols.source_text is not None else cols.text
        found = [out_of_range_rows(recs, keys["rating"], cols.rating, *rating_range)]
        if text is not None:
            found.append(blank_rows(recs, keys.get("text", "text"), text))
        keep, counts = resolve(found, len(cols.user), on_bad_rows)
        if known is not None and item_path is not None:
            check_known(recs, keys["item"], cols.item, known, item_path, keep)
        kept = np.arange(len(cols.user)) if keep is None else np.nonzero(keep)[0]
        if keep is not None:
            cols = _take_rows(cols, kept)
            skipped = {r: skipped[r] + counts[r] for r in skipped}
        tables.append(interactions_table(cols))
        rows.append(recs.start + kept)
        if lines is not None and recs.lines is not None:
            lines.append(np.asarray(recs.lines, dtype=np.int64)[kept])
        else:
            lines = None
    inter = pa.concat_tables(tables)
    file_rows = np.concatenate(rows)
    file_lines = np.concatenate(lines) if lines is not None else None
    inter, skipped["duplicate_review_id"] = _drop_repeated_ids(
        inter, f"{path}: column {keys['review_id']!r}", file_rows, file_lines, on_bad_rows
    )
    if inter.num_rows == 0:
        raise DataError(f"{path}: on_bad_rows=skip dropped every row ({skipped})")
    if items is None:
        item_cols = ItemColumns(item=pc.unique(inter["item"]).to_pylist())
        item_cols.item.sort()
    return RawReviews(
        interactions=inter,
        items=items_table(item_cols),
        users=users_table(inter["user"]),
        skipped=skipped,
    )


def _drop_repeated_ids(
    inter: pa.Table,
    column: str,
    file_rows: np.ndarray,
    file_lines: np.ndarray | None,
    on_bad_rows: Policy,
) -> tuple[pa.Table, int]:
    """Drop (or fail on) reviews whose id repeats an earlier kept review's."""
    ids = inter["review_id"]
    mask = repeated_rows(ids)
    if not mask.any():
        return inter, 0
    row, earlier, value = first_repeat(ids, mask)

    def where(i: int) -> str:
        line = f" (line {file_lines[i]})" if file_lines is not None else ""
        return f"row {file_rows[i]}{line}"

    message = (
        f"{column} {where(row)}: repeats the id {value!r} of {where(earlier)}; ids must be unique"
    )
    keep, counts = resolve([BadRows("duplicate_review_id", mask, message)], len(mask), on_bad_rows)
    assert keep is not None
    return inter.filter(pa.array(keep)), counts["duplicate_review_id"]


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
