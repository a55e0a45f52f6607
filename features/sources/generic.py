"""Any review table (Parquet, CSV/TSV or JSON Lines) with a column mapping -> raw reviews.

    files:   {reviews: reviews.csv, items: items.parquet}      (items is optional)
    columns: {user: customer_id, item: product_id, rating: stars, timestamp: ts, ...}

`columns` maps a raw-reviews name to the source's column name; unmapped names are
looked up as themselves.  Review columns: user, item, rating, timestamp (unix s or
an ISO date), text and review_id (optional; the row number when absent).  Item
columns: item, title, categories (a list, or one string split on "|"), year, price.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from features.bad_rows import Policy
from features.sources.records import column, iter_records, read_records
from features.sources.tables import (
    ItemColumns,
    ReviewChunks,
    ReviewColumns,
    StagedReviews,
    stage_reviews,
)

FILES = {"reviews": "reviews.parquet", "items": "items.parquet"}
OPTIONAL_FILES = ("items",)
COLUMNS = (
    "user",
    "item",
    "rating",
    "timestamp",
    "text",
    "review_id",
    "title",
    "categories",
    "year",
    "price",
)


def split_list(value: Any) -> Any:
    """A "a|b" string -> ["a", "b"]; lists and nulls pass through."""
    if isinstance(value, str):
        return [v.strip() for v in value.split("|") if v.strip()]
    return value


def review_chunks(path: Path, name: dict[str, str]) -> ReviewChunks:
    """The review file in chunks; without a review id column, the file row is the id."""
    has_id = None
    for reviews in iter_records(path):
        if has_id is None:
            has_id = name["review_id"] in reviews.rows[0]
        n = len(reviews.rows)
        yield (
            reviews,
            ReviewColumns(
                user=column(reviews, name["user"], "id"),
                item=column(reviews, name["item"], "id"),
                rating=column(reviews, name["rating"], "num"),
                timestamp=column(reviews, name["timestamp"], "date"),
                review_id=column(reviews, name["review_id"], "id")
                if has_id
                else [str(reviews.start + i) for i in range(n)],
                text=column(reviews, name["text"], "text", required=False),
            ),
        )


def read(
    paths: dict[str, Path],
    rating_range: tuple[float, float],
    mapping: dict[str, str],
    on_bad_rows: Policy,
    work: Path,
) -> StagedReviews:
    name = {c: mapping.get(c, c) for c in COLUMNS}
    keys = {
        "review_id": name["review_id"],
        "rating": name["rating"],
        "item": name["item"],
        "item_key": name["item"],
        "text": name["text"],
    }
    chunks = review_chunks(paths["reviews"], name)
    if not paths["items"].is_file():
        return stage_reviews(chunks, keys, rating_range, None, on_bad_rows, work)
    items = read_records(paths["items"])
    for rec in items.rows:
        if name["categories"] in rec:
            rec[name["categories"]] = split_list(rec[name["categories"]])
    item_cols = ItemColumns(
        item=column(items, name["item"], "id"),
        title=column(items, name["title"], "str", required=False),
        categories=column(items, name["categories"], "str_list", required=False),
        year=column(items, name["year"], "int", required=False),
        extras={"price": column(items, name["price"], "num", required=False)},
    )
    return stage_reviews(chunks, keys, rating_range, (items, item_cols), on_bad_rows, work)
