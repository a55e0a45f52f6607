"""Amazon Reviews 2023 (McAuley lab) -> raw reviews.

Files (JSON Lines, optionally .gz; https://amazon-reviews-2023.github.io/):

    reviews.jsonl  user_id, parent_asin, rating, timestamp (unix ms), title, text,
                   images ([{"large_image_url": ...}, ...])
    meta.jsonl     parent_asin, title, main_category, categories ([...]), price
                   (number, or null / "None"), images ([{"large": ..., "hi_res": ...}])

Items are keyed by `parent_asin` (the dataset's own advice: variants share reviews).
Review id = (user_id, parent_asin, timestamp).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from features.bad_rows import Policy
from features.sources.records import Records, column, iter_records, read_records
from features.sources.tables import ItemColumns, ReviewColumns, StagedReviews, stage_reviews

FILES = {"reviews": "reviews.jsonl", "meta": "meta.jsonl"}
OPTIONAL_FILES: tuple[str, ...] = ()


def image_urls(images: Any, keys: tuple[str, ...]) -> list[str] | None:
    """The first of `keys` present in each image dict."""
    if not isinstance(images, list):
        return None
    urls = []
    for img in images:
        if isinstance(img, dict):
            url = next((img[k] for k in keys if img.get(k)), None)
            if url:
                urls.append(url)
    return urls or None


def _prices(meta: Records) -> list[float | None]:
    # The dump writes a missing price as null or as the string "None".
    for rec in meta.rows:
        if rec.get("price") in ("None", "", "—"):
            rec["price"] = None
    return column(meta, "price", "num", required=False)


def review_columns(reviews: Records) -> ReviewColumns:
    user = column(reviews, "user_id", "id")
    item = column(reviews, "parent_asin", "id")
    ms = column(reviews, "timestamp", "int")
    text = column(reviews, "text", "text", required=False)
    title = column(reviews, "title", "str", required=False)
    return ReviewColumns(
        user=user,
        item=item,
        rating=column(reviews, "rating", "num"),
        timestamp=[t // 1000 for t in ms],
        review_id=[f"{u}|{i}|{t}" for u, i, t in zip(user, item, ms)],
        # The review's headline is part of what the reviewer wrote.
        text=[". ".join(p for p in (h, b) if p) or None for h, b in zip(title, text)],
        source_text=text,
        image_urls=[
            image_urls(r.get("images"), ("large_image_url", "medium_image_url"))
            for r in reviews.rows
        ],
    )


def read(
    paths: dict[str, Path], rating_range: tuple[float, float], on_bad_rows: Policy, work: Path
) -> StagedReviews:
    meta = read_records(paths["meta"])
    cats = column(meta, "categories", "str_list", required=False)
    main = column(meta, "main_category", "str", required=False)
    items = ItemColumns(
        item=column(meta, "parent_asin", "id"),
        title=column(meta, "title", "str", required=False),
        categories=[c if c else ([m] if m else None) for c, m in zip(cats, main)],
        extras={
            "price": _prices(meta),
            "image_urls": [
                image_urls(r.get("images"), ("large", "hi_res", "thumb")) for r in meta.rows
            ],
        },
    )
    keys = {"review_id": "user_id+parent_asin+timestamp", "rating": "rating", "item": "parent_asin"}
    chunks = ((r, review_columns(r)) for r in iter_records(paths["reviews"]))
    return stage_reviews(
        chunks, {**keys, "item_key": "parent_asin"}, rating_range, (meta, items), on_bad_rows, work
    )
