"""The Yelp Open Dataset -> raw reviews.

Files (JSON Lines, https://www.yelp.com/dataset/documentation/main):

    review.json    review_id, user_id, business_id, stars, date ("2016-03-09 00:44:35"), text
    business.json  business_id, name, categories ("Pizza, Restaurants" or null),
                   attributes.RestaurantsPriceRange2 ("1".."4", "None", or absent)
    photos.json    photo_id, business_id, caption, label      (optional file)

Photo captions are Yelp's own, used as they are (no captioning model needed); a
photo without one is listed as `photos/<photo_id>.jpg` (the photo archive's layout)
in the item's `image_urls`, for BLIP-2 to caption when `images.blip2_path` is set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from features.bad_rows import Policy
from features.sources.records import Records, column, iter_records, read_records
from features.sources.tables import ItemColumns, ReviewColumns, StagedReviews, stage_reviews

FILES = {"reviews": "review.json", "business": "business.json", "photos": "photos.json"}
OPTIONAL_FILES = ("photos",)


def split_categories(text: str | None) -> list[str] | None:
    """`"Pizza, Restaurants"` -> `["Pizza", "Restaurants"]` (Yelp's comma-joined list)."""
    if text is None:
        return None
    return [c.strip() for c in text.split(",") if c.strip()]


def price_tier(attributes: Any) -> int | None:
    """`attributes.RestaurantsPriceRange2` -> 1..4; None when absent or "None"."""
    if not isinstance(attributes, dict):
        return None
    value = str(attributes.get("RestaurantsPriceRange2", "")).strip().strip("'\"")
    return int(value) if value in ("1", "2", "3", "4") else None


def review_columns(reviews: Records) -> ReviewColumns:
    return ReviewColumns(
        user=column(reviews, "user_id", "id"),
        item=column(reviews, "business_id", "id"),
        rating=column(reviews, "stars", "num"),
        timestamp=column(reviews, "date", "date"),
        review_id=column(reviews, "review_id", "id"),
        text=column(reviews, "text", "text", required=False),
    )


def read(
    paths: dict[str, Path], rating_range: tuple[float, float], on_bad_rows: Policy, work: Path
) -> StagedReviews:
    business = read_records(paths["business"])
    ids = column(business, "business_id", "id")
    captions: dict[str, list[str]] = {}
    uncaptioned: dict[str, list[str]] = {}
    if paths["photos"].is_file():
        photos = read_records(paths["photos"])
        for b, p, c in zip(
            column(photos, "business_id", "id"),
            column(photos, "photo_id", "str", False),
            column(photos, "caption", "str", False),
        ):
            if c and c.strip():
                captions.setdefault(b, []).append(c.strip())
            elif p:  # the dump's photo archive: photos/<photo_id>.jpg (BLIP-2 may caption it)
                uncaptioned.setdefault(b, []).append(f"photos/{p}.jpg")
    cats = column(business, "categories", "str", required=False)
    attrs = [r.get("attributes") for r in business.rows]
    items = ItemColumns(
        item=ids,
        title=column(business, "name", "str", required=False),
        categories=[split_categories(c) for c in cats],
        extras={
            "price_tier": [price_tier(a) for a in attrs],
            "captions": [captions.get(b) for b in ids],
            "image_urls": [uncaptioned.get(b) for b in ids],
        },
    )
    keys = {"review_id": "review_id", "rating": "stars", "item": "business_id", "text": "text"}
    chunks = ((r, review_columns(r)) for r in iter_records(paths["reviews"]))
    return stage_reviews(
        chunks,
        {**keys, "item_key": "business_id"},
        rating_range,
        (business, items),
        on_bad_rows,
        work,
    )
