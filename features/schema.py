"""The table schemas of the features stage: raw reviews in, examples and entities out.

The raw-reviews schema is what `dlrrec data fetch` writes and `dlrrec features build`
reads; any dataset converted to it can go through the pipeline:

    interactions.parquet  user, item: string; rating: float32; timestamp: int64 (unix s);
                          text: string (nullable); review_id: string
    items.parquet         item, title: string; categories: list<string>; year: int32 (nullable)
    users.parquet         user: string; age: int32; gender, occupation, zip: string

Review sources (features/sources/) may add the OPTIONAL_COLUMNS, all nullable:

    interactions          image_urls: list<string>   photos attached to the review
    items                 price: float32 (currency units); price_tier: int32 (1..4 = $..$$$$);
                          captions: list<string> (photo captions the source supplies);
                          image_urls: list<string>

The examples and entity tables are the contract with `trainer/` and `similarity/`
(DESIGN.md "Artifacts"); `_meta.json` describes them.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

RAW_INTERACTIONS = pa.schema(
    [
        pa.field("user", pa.string(), nullable=False),
        pa.field("item", pa.string(), nullable=False),
        pa.field("rating", pa.float32(), nullable=False),
        pa.field("timestamp", pa.int64(), nullable=False),
        pa.field("text", pa.string()),
        pa.field("review_id", pa.string(), nullable=False),
    ]
)
RAW_ITEMS = pa.schema(
    [
        pa.field("item", pa.string(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("categories", pa.list_(pa.string())),
        pa.field("year", pa.int32()),
    ]
)
RAW_USERS = pa.schema(
    [
        pa.field("user", pa.string(), nullable=False),
        pa.field("age", pa.int32()),
        pa.field("gender", pa.string()),
        pa.field("occupation", pa.string()),
        pa.field("zip", pa.string()),
    ]
)
RAW_FILES = {
    "interactions.parquet": RAW_INTERACTIONS,
    "items.parquet": RAW_ITEMS,
    "users.parquet": RAW_USERS,
}

# Columns `dlrrec features build` reads; the others (text, review_id) may be absent.
REQUIRED_COLUMNS = {
    "interactions.parquet": ("user", "item", "rating", "timestamp"),
    "items.parquet": ("item", "title", "categories", "year"),
    "users.parquet": ("user", "age", "gender", "occupation", "zip"),
}

OPTIONAL_COLUMNS = {
    "interactions.parquet": (pa.field("image_urls", pa.list_(pa.string())),),
    "items.parquet": (
        pa.field("price", pa.float32()),
        pa.field("price_tier", pa.int32()),
        pa.field("captions", pa.list_(pa.string())),
        pa.field("image_urls", pa.list_(pa.string())),
    ),
    "users.parquet": (),
}

# Sparse features: (name, multi_valued).  user_id/item_id index the entity tables.
SPARSE_FEATURES = (
    ("user_id", False),
    ("item_id", False),
    ("categories", True),
    ("occupation", False),
    ("gender", False),
    ("age_bucket", False),
    ("zip_prefix", False),
)
DENSE_FEATURES = ("year", "age")  # + price, has_price when items have prices

# MovieLens' own age groups (the ML-1M README): <18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+.
AGE_BUCKET_EDGES = (18, 25, 35, 45, 50, 56)
AGE_BUCKET_NAMES = ("<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")


def content_vector(dim: int) -> pa.DataType:
    """A float16 content vector of `dim` values (fixed_size_list<halffloat>[dim])."""
    return pa.list_(pa.float16(), dim)


def examples_schema(
    dim: int,
    dense: Sequence[str] = DENSE_FEATURES,
    bags: Sequence[str] = (),
    profile_key: bool = True,
) -> pa.Schema:
    """One row per interaction; every column is a model input except `label`, `rating`
    (the raw rating `label` is cut from: a training target of the rating head, never an
    input) and `timestamp`.

    `dense` names the float32 dense columns (DENSE_FEATURES, plus `price` and
    `has_price` when the dataset has prices); `_meta.json` lists them.  `bags` names
    the optional history bags (features/history.py), list<int64> of entity ids.
    `user_text_key` is the row's key into `entities/user_profiles/` (its
    out-of-fold / earlier-block profile, features/profiles.py); no row holds a vector.
    """
    return pa.schema(
        [
            pa.field("user_id", pa.int64(), nullable=False),
            pa.field("item_id", pa.int64(), nullable=False),
            pa.field("label", pa.float32(), nullable=False),
            pa.field("rating", pa.float32(), nullable=False),
            pa.field("timestamp", pa.int64(), nullable=False),
            pa.field("categories", pa.list_(pa.int64()), nullable=False),
            pa.field("occupation", pa.int64(), nullable=False),
            pa.field("gender", pa.int64(), nullable=False),
            pa.field("age_bucket", pa.int64(), nullable=False),
            pa.field("zip_prefix", pa.int64(), nullable=False),
            *(pa.field(name, pa.float32(), nullable=False) for name in dense),
            *([pa.field(PROFILE_KEY, pa.int64(), nullable=False)] if profile_key else []),
            *(pa.field(name, pa.list_(pa.int64()), nullable=False) for name in bags),
        ]
    )


# The per-row key of the profile table, and the table: key = user * slots + slot.
PROFILE_KEY = "user_text_key"
PROFILES_FILE = "entities/user_profiles"  # a folder of part-NNNNN.parquet, one per user range


def profiles_schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("key", pa.int64(), nullable=False),
            pa.field("user_text", content_vector(dim), nullable=False),
        ]
    )


def items_entity_schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("item_id", pa.int64(), nullable=False),
            pa.field("item", pa.string(), nullable=False),
            pa.field("item_text", content_vector(dim), nullable=False),
            pa.field("n_train_pos", pa.int32(), nullable=False),
        ]
    )


def users_entity_schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("user_id", pa.int64(), nullable=False),
            pa.field("user", pa.string(), nullable=False),
            pa.field("user_text", content_vector(dim), nullable=False),
            pa.field("profile_count", pa.int32(), nullable=False),
            pa.field("has_profile", pa.bool_(), nullable=False),
        ]
    )
