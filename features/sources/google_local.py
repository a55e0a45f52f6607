"""Google Local reviews (UCSD, Li et al. 2022) -> raw reviews.

Files (JSON Lines, optionally .gz; https://datarepo.eng.ucsd.edu/mcauley_group/gdrive/googlelocal/):

    reviews.json   user_id, gmap_id, rating, time (unix ms), text (or null),
                   pics ([{"url": [...]}, ...] or null)
    meta.json      gmap_id, name, category (["Pizza restaurant", ...] or null),
                   price ("$".."$$$$" or null)

The reviews carry no id; (user_id, gmap_id, time) is one, and a repeat of it is an
error rather than a silent duplicate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from features.bad_rows import Policy
from features.sources.records import Records, column, iter_records, read_records
from features.sources.tables import ItemColumns, ReviewColumns, StagedReviews, stage_reviews

FILES = {"reviews": "reviews.json", "meta": "meta.json"}
OPTIONAL_FILES: tuple[str, ...] = ()


def dollar_tier(price: str | None) -> int | None:
    """`"$$"` -> 2 (also the `"₩₩"`-style other currency signs); None when not a run of one sign."""
    if not price or len(set(price.strip())) != 1 or len(price.strip()) > 4:
        return None
    return len(price.strip())


def pic_urls(pics: Any) -> list[str] | None:
    """`[{"url": ["u1", "u2"]}, ...]` -> the first url of each picture."""
    if not isinstance(pics, list):
        return None
    urls = [p["url"][0] for p in pics if isinstance(p, dict) and p.get("url")]
    return urls or None


def review_columns(reviews: Records) -> ReviewColumns:
    user = column(reviews, "user_id", "id")
    item = column(reviews, "gmap_id", "id")
    ms = column(reviews, "time", "int")
    return ReviewColumns(
        user=user,
        item=item,
        rating=column(reviews, "rating", "num"),
        timestamp=[t // 1000 for t in ms],
        review_id=[f"{u}|{i}|{t}" for u, i, t in zip(user, item, ms)],
        text=column(reviews, "text", "text", required=False),
        image_urls=[pic_urls(r.get("pics")) for r in reviews.rows],
    )


def read(
    paths: dict[str, Path], rating_range: tuple[float, float], on_bad_rows: Policy, work: Path
) -> StagedReviews:
    meta = read_records(paths["meta"])
    items = ItemColumns(
        item=column(meta, "gmap_id", "id"),
        title=column(meta, "name", "str", required=False),
        categories=column(meta, "category", "str_list", required=False),
        extras={"price_tier": [dollar_tier(p) for p in column(meta, "price", "str", False)]},
    )
    keys = {"review_id": "user_id+gmap_id+time", "rating": "rating", "item": "gmap_id"}
    chunks = ((r, review_columns(r)) for r in iter_records(paths["reviews"]))
    return stage_reviews(
        chunks, {**keys, "item_key": "gmap_id"}, rating_range, (meta, items), on_bad_rows, work
    )
