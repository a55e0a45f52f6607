"""Review-derived content of a features build: LLM summaries, price, types and image captions.

Two optional `features` sections turn it on:

    llm:     per-entity review summaries (MiniLM-embedded) become the `text` modality
             (`user_text`, `item_text`), and the item's price category and restaurant
             types become the `price` dense feature and the `categories` sparse
             feature; all out of fold (features/summaries.py).  With no `base_url` the
             offline provider answers: extractive summaries, price and categories from
             the source's metadata.
    images:  caption vectors become the `image` modality (`user_image`, `item_image`)
             with `has_user_image` / `has_item_image` masks (features/captions.py).

Where the vectors go (DESIGN.md "Artifacts"; trainer/data.py reads them):

    examples/*  per row, leakage-free: user_text, item_text (summaries), user_image,
                item_image and their has_* masks (False: no review text / no captioned
                photo, and a zero vector); `_meta.json` `row_content` lists the
                item columns, which the trainer then reads per row instead of from
                the entity table
    entities/*  per entity, from training reviews only: the same columns and masks
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from features import captions, llm, summaries
from features.dense import PRICE_CATEGORY_TIER, item_prices
from features.examples import cap_lists, vectors
from features.io import RawReviews
from features.split import SPLITS
from features.vocab import build_vocab, encode

log = logging.getLogger("dlrrec.features")


@dataclass
class ReviewContent:
    """What the llm/images sections add to a build (every array in row or entity order)."""

    row_columns: dict[str, np.ndarray] = field(default_factory=dict)  # [N, D] or bool [N]
    user_columns: dict[str, np.ndarray] = field(default_factory=dict)  # [U, D] or bool [U]
    item_columns: dict[str, np.ndarray] = field(default_factory=dict)  # [I, D] or bool [I]
    row_price: np.ndarray | None = None  # float64 [N] tier 1..3, NaN = none
    row_types: list[list[str]] | None = None  # [N]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def content(self) -> dict[str, list[str]]:
        """`_meta.json` `content`: the vector columns per entity kind."""
        out: dict[str, list[str]] = {"user": ["user_text"], "item": ["item_text"]}
        for name in self.row_columns:
            kind = name.split("_")[0]
            if kind in out and name not in out[kind]:
                out[kind].append(name)
        return out

    @property
    def row_content(self) -> list[str]:
        """Item vector columns stored per row in the examples (read per row by the trainer)."""
        return [c for c in self.row_columns if c.startswith("item_")]

    def price_inputs(
        self, items: pa.Table, row_item: np.ndarray
    ) -> tuple[np.ndarray, str | None, np.ndarray]:
        """(price values, their source, per-row index into them) for `dense.price_features`.

        The LLM's out-of-fold price category is per row; otherwise the item metadata.
        """
        if self.row_price is None:
            return (*item_prices(items), row_item)
        return self.row_price, "llm", np.arange(len(row_item))

    def categories(self, train: np.ndarray, cap: int) -> tuple[pa.ListArray, list[str], int]:
        """The per-row LLM types as the `categories` feature: (list<int64> ids, vocab, cut lists).

        The vocabulary holds the types of training rows (which read training reviews
        of other folds only), id 0 = a type unseen there.
        """
        assert self.row_types is not None
        lists, cut = cap_lists(pa.array(self.row_types, pa.list_(pa.string())), cap)
        lengths = np.diff(lists.offsets.to_numpy())
        flat = lists.flatten()
        owner = np.repeat(np.arange(len(lengths)), lengths)
        vocab = build_vocab(flat.filter(pa.array(train[owner])))
        offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
        ids = pa.ListArray.from_arrays(offsets, pa.array(encode(flat, vocab), pa.int64()))
        return ids, vocab.to_pylist(), cut

    def add_to_examples(
        self, tables: dict[str, pa.Table], codes: np.ndarray
    ) -> dict[str, pa.Table]:
        """Set or append the per-row columns (vectors as float16, masks as bool)."""
        out = {}
        for code, split in enumerate(SPLITS):
            idx = np.nonzero(codes == code)[0]
            out[split] = _set_columns(
                tables[split], {k: v[idx] for k, v in self.row_columns.items()}
            )
        return out

    def add_to_entities(self, users: pa.Table, items: pa.Table) -> tuple[pa.Table, pa.Table]:
        return _set_columns(users, self.user_columns), _set_columns(items, self.item_columns)


def _set_columns(table: pa.Table, columns: dict[str, np.ndarray]) -> pa.Table:
    for name, x in columns.items():
        if x.ndim == 2:
            col: pa.Array = vectors(x)
            f = pa.field(name, col.type, nullable=False)
        else:
            col = pa.array(x.astype(bool))
            f = pa.field(name, pa.bool_(), nullable=False)
        i = table.schema.get_field_index(name)
        table = table.set_column(i, f, col) if i >= 0 else table.append_column(f, col)
    return table


def _column(table: pa.Table, name: str) -> list[Any] | None:
    return table[name].to_pylist() if name in table.column_names else None


def build_review_content(
    llm_cfg: llm.LLMConfig | None,
    images_cfg: captions.ImagesConfig | None,
    raw: RawReviews,
    items: pa.Table,
    user_names: list[str],
    row_user: np.ndarray,
    row_item: np.ndarray,
    train: np.ndarray,
    timestamps: np.ndarray,
    temporal: bool,
    seed: int,
    raw_dir: str,
    embed: Callable[[list[str]], np.ndarray],
    dim: int,
) -> ReviewContent:
    """Build the llm and images content (either may be None = off).

    Args:
        llm_cfg, images_cfg: the config sections.
        raw: the source's tables (interactions in row order).
        items: the item table in index order (optional columns: captions, image_urls,
            price_tier).
        user_names: [U] raw user ids in index order.
        row_user, row_item: int64 [N]; train: bool [N].
        timestamps: int64 [N].
        temporal: the split is temporal: summaries read strictly earlier time blocks
            (features/summaries.py), caption vectors strictly earlier photos.
        seed: the fold hash seed.
        raw_dir: default folder of image files.
        embed: texts -> float16-exact vectors [len, D].
        dim: D.
    """
    x = _Inputs(
        raw, items, user_names, row_user, row_item, train, timestamps, temporal, seed,
        raw_dir, embed, dim,
    )  # fmt: skip
    out = ReviewContent()
    if llm_cfg is not None:
        _add_llm_content(out, llm_cfg, x)
    if images_cfg is not None:
        _add_image_content(out, images_cfg, x)
    return out


@dataclass(frozen=True)
class _Inputs:
    """The arguments of `build_review_content` (see there), shared by its two steps."""

    raw: RawReviews
    items: pa.Table
    user_names: list[str]
    row_user: np.ndarray
    row_item: np.ndarray
    train: np.ndarray
    timestamps: np.ndarray
    temporal: bool
    seed: int
    raw_dir: str
    embed: Callable[[list[str]], np.ndarray]
    dim: int


def _review_folds(x: _Inputs, k: int) -> tuple[np.ndarray, list[str]]:
    """(fold of each review, review ids): time blocks on a temporal split, else a hash
    of the review id (or user|item|time where a table has none): never the text or the
    rating, which may change without moving a review's fold."""
    inter = x.raw.interactions
    review_ids = _column(inter, "review_id") or [
        f"{u}|{i}|{t}"
        for u, i, t in zip(
            inter["user"].to_pylist(), inter["item"].to_pylist(), inter["timestamp"].to_pylist()
        )
    ]
    if x.temporal:
        return summaries.time_blocks(x.timestamps, x.train, k), review_ids
    return summaries.review_folds(review_ids, k, x.seed), review_ids


def _add_llm_content(out: ReviewContent, llm_cfg: llm.LLMConfig, x: _Inputs) -> None:
    """User and item summaries out of fold (the `text` modality); with an LLM endpoint,
    also each row's price category and restaurant types."""
    provider = llm.build_provider(llm_cfg)
    k = llm_cfg.folds
    folds, review_ids = _review_folds(x, k)
    texts = _column(x.raw.interactions, "text") or [None] * len(review_ids)
    tiers = _column(x.items, "price_tier")
    cats = _column(x.items, "categories")
    item_names = x.items["item"].to_pylist()
    u = summaries.extract_out_of_fold(
        provider, "user", x.user_names, x.row_user, texts, x.train, folds, k, x.embed, x.dim,
        earlier=x.temporal,
    )  # fmt: skip
    i = summaries.extract_out_of_fold(
        provider, "item", item_names, x.row_item, texts, x.train, folds, k, x.embed, x.dim,
        tiers, cats, earlier=x.temporal,
    )  # fmt: skip
    out.row_columns.update(
        user_text=u.row_vecs,
        has_user_text=u.row_mask,
        item_text=i.row_vecs,
        has_item_text=i.row_mask,
    )
    out.user_columns.update(user_text=u.vecs, has_user_text=u.mask)
    out.item_columns.update(item_text=i.vecs, has_item_text=i.mask)
    if llm_cfg.base_url:  # offline: price and categories stay the metadata's
        out.row_price = np.asarray(
            [PRICE_CATEGORY_TIER.get(p, np.nan) for p in i.row_price], dtype=np.float64
        )
        out.row_types = i.row_types
    out.meta["llm"] = {
        **summaries.usage_meta(provider, k, u, i),
        "base_url": llm_cfg.base_url or None,
        "rows_read": (
            "training reviews of earlier time blocks (train rows)"
            if x.temporal
            else "training reviews of other folds (train rows)"
        )
        + "; all training reviews (val/test rows, entities)",
        "rows_with_summary": {"user": int(u.row_mask.sum()), "item": int(i.row_mask.sum())},
        "entities_with_summary": {"user": int(u.mask.sum()), "item": int(i.mask.sum())},
    }
    log.info("features: llm %s, usage %s", provider.name, provider.usage.to_meta())


def _add_image_content(out: ReviewContent, images_cfg: captions.ImagesConfig, x: _Inputs) -> None:
    """Caption vectors of review and item photos (the `image` modality)."""
    n, n_items = len(x.row_user), x.items.num_rows
    iv = captions.build_image_vectors(
        item_captions=_column(x.items, "captions") or [None] * n_items,
        item_images=_column(x.items, "image_urls") or [None] * n_items,
        review_images=_column(x.raw.interactions, "image_urls") or [None] * n,
        row_user=x.row_user,
        row_item=x.row_item,
        train=x.train,
        n_users=len(x.user_names),
        n_items=n_items,
        embed=x.embed,
        captioner=captions.build_captioner(images_cfg),
        image_dir=Path(images_cfg.image_dir or x.raw_dir),
        dim=x.dim,
        timestamps=x.timestamps if x.temporal else None,
    )
    out.row_columns.update(
        user_image=iv.user_rows,
        has_user_image=iv.user_rows_mask,
        item_image=iv.item_rows,
        has_item_image=iv.item_rows_mask,
    )
    out.user_columns.update(user_image=iv.users, has_user_image=iv.users_mask)
    out.item_columns.update(item_image=iv.items, has_item_image=iv.items_mask)
    out.meta["images"] = {
        **iv.meta,
        "rows_read": (
            "photos of reviews strictly earlier than the row (any split)"
            if x.temporal
            else "photos of training reviews except the row's own"
        )
        + ", and the item's own photos",
    }
    log.info("features: image captions %s", iv.meta)
