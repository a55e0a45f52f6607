"""Assemble the raw-reviews tables (features/schema.py) from an adapter's columns.

Pure conversions plus the checks every source shares: unique review ids, ratings in
range, reviews that name known items.  Review sources know nothing about users
beyond their id, so the user table has null demographics (they encode as id 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from features.bad_rows import Policy, resolve
from features.io import RawReviews
from features.schema import OPTIONAL_COLUMNS, RAW_INTERACTIONS, RAW_ITEMS, RAW_USERS
from features.sources.records import (
    Records,
    blank_rows,
    check_known,
    check_unique,
    out_of_range_rows,
    repeated_id_rows,
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


def users_table(user_ids: list[str]) -> pa.Table:
    uniq = sorted(set(user_ids))
    none = [None] * len(uniq)
    return pa.Table.from_pydict(
        {"user": uniq, "age": none, "gender": none, "occupation": none, "zip": none},
        schema=RAW_USERS,
    )


def raw_reviews(
    reviews: Records,
    cols: ReviewColumns,
    keys: dict[str, str],
    rating_range: tuple[float, float],
    items: tuple[Records, ItemColumns] | None,
    on_bad_rows: Policy = "error",
) -> RawReviews:
    """Check and assemble.  `keys` maps review_id/rating/item/text to the source's field names.

    Without an item file, the items are the distinct reviewed ids with no content.
    Bad review rows (features/bad_rows.py: a rating out of range, a blank text, a
    repeated review id) fail or are dropped, as `on_bad_rows` says.

    Raises:
        DataError: a bad row (with `error`), an unknown item, a repeated item id;
            naming the file, the source column and the row.
    """
    text = cols.source_text if cols.source_text is not None else cols.text
    found = [out_of_range_rows(reviews, keys["rating"], cols.rating, *rating_range)]
    if text is not None:
        found.append(blank_rows(reviews, keys.get("text", "text"), text))
    # With skip, a duplicate is judged among the surviving rows (the first good copy
    # is kept); with error, among all rows, so the message names the first repeat.
    ignore = np.zeros(len(cols.user), dtype=bool)
    if on_bad_rows == "skip":
        for f in found:
            ignore |= f.mask
    found.append(repeated_id_rows(reviews, keys["review_id"], cols.review_id, ignore))
    keep, skipped = resolve(found, len(cols.user), on_bad_rows)
    if keep is not None:
        cols = _take_rows(cols, np.nonzero(keep)[0])
    if items is None:
        item_cols = ItemColumns(item=sorted(set(cols.item)))
    else:
        item_recs, item_cols = items
        check_unique(item_recs, keys["item_key"], item_cols.item)
        check_known(reviews, keys["item"], cols.item, set(item_cols.item), Path(item_recs.path))
    return RawReviews(
        interactions=interactions_table(cols),
        items=items_table(item_cols),
        users=users_table(cols.user),
        skipped=skipped,
    )


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
