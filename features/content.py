"""Review-derived content of a features build: LLM summaries, price and types, image captions.

Two optional `features` sections turn it on:

    llm:     per-entity review summaries (MiniLM-embedded) become the `text` modality
             (`user_text`, `item_text`), and the item's price category and restaurant
             types become the `price` dense feature and the `categories` sparse
             feature; all out of fold (features/summaries.py).  With no `base_url` the
             offline provider answers: extractive summaries, price and categories from
             the source's metadata.
    images:  caption vectors become the `image` modality (`user_image`, `item_image`;
             `has_user_image` / `has_item_image` masks in the entity tables;
             features/captions.py).

Where the vectors go (DESIGN.md "Artifacts"; trainer/data.py reads them):

    entities/{user,item}_summaries/  per (entity, slot), key = entity * (K + 1) + slot:
                the summary vector of the slot's review set
    entities/{user,item}_images/     per (entity, profile slot): the mean caption vector
                (only keys that have a vector; a missing key reads as a zero vector).
                `_meta.json` `keyed_content` names each table, its entity and slots.
    examples/*  per row only keys: `user_text_key`, `item_text_key` (the slot is the
                row's review fold for a training row, K otherwise), `user_image_key`,
                `item_image_key` (the row's profile slot); the llm price and types are
                looked up by `item_text_key` (per-key values, not per-row lists)
    entities/*  per entity, from training reviews only: the same columns and masks
                (each table's last slot)
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
from features.dense import PRICE_CATEGORY_TIER
from features.examples import cap_lists, vectors
from features.io import RawReviews, vector_writer
from features.schema import content_vector
from features.split import SPLITS
from features.vocab import build_vocab, encode

log = logging.getLogger("dlrrec.features")

KEY_BLOCK = 65_536  # keys per written row group of a keyed table


@dataclass
class KeyedContent:
    """One tower column's vectors per (entity, slot): key = entity * slots + slot.

    Nothing is per row: `vecs` holds each distinct vector once and `key_vector` maps a
    key to it, so memory grows with entities x slots (8 B a key) and distinct vectors.
    """

    entity: str  # "user" | "item"
    slots: int
    key_vector: np.ndarray  # int64 [E * slots] row of `vecs`, -1 = none (a zero vector)
    vecs: np.ndarray  # [V, D] float32 or float16
    scheme: str  # out_of_fold | earlier_blocks
    file: str  # the table, relative to features/
    by_profile_slot: bool  # a row's slot is its profile slot (else its review fold)

    def write(self, folder: Path, col: str) -> None:
        """`folder`/part-00000.parquet: (key, `col`) of every key that has a vector."""
        folder.mkdir(parents=True, exist_ok=True)
        schema = pa.schema([pa.field("key", pa.int64(), nullable=False),
                            pa.field(col, content_vector(self.vecs.shape[1]), nullable=False)])  # fmt: skip
        with vector_writer(folder / "part-00000.parquet", schema, "key") as w:
            for a in range(0, self.key_vector.size, KEY_BLOCK):
                idx = self.key_vector[a : a + KEY_BLOCK]
                keys = np.flatnonzero(idx >= 0)
                vecs = self.vecs[idx[keys]].reshape(-1, self.vecs.shape[1])
                w.write_table(pa.Table.from_arrays([pa.array(keys + a), vectors(vecs)], schema=schema))


def key_column(col: str) -> str:
    """The examples' per-row key column of keyed tower column `col`."""
    return f"{col}_key"


@dataclass
class ReviewContent:
    """What the llm/images sections add to a build (arrays in entity, key or row order)."""

    user_columns: dict[str, np.ndarray] = field(default_factory=dict)  # [U, D] or bool [U]
    item_columns: dict[str, np.ndarray] = field(default_factory=dict)  # [I, D] or bool [I]
    keyed: dict[str, KeyedContent] = field(default_factory=dict)  # {user,item}_{text,image}
    row_slot: np.ndarray | None = None  # int8 [N] each row's review-fold slot (the summaries)
    key_price: np.ndarray | None = None  # float64 [I * S] tier 1..3 per item key, NaN = none
    key_types: list[list[str]] | None = None  # [I * S] per item key
    key_rows: np.ndarray | None = None  # int64 [I * S] rows reading each item key
    key_train: np.ndarray | None = None  # int64 [I * S] training rows among them
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def content(self) -> dict[str, list[str]]:
        """`_meta.json` `content`: the vector columns per entity kind."""
        out: dict[str, list[str]] = {"user": ["user_text"], "item": ["item_text"]}
        for name in self.keyed:
            kind = name.split("_")[0]
            if kind in out and name not in out[kind]:
                out[kind].append(name)
        return out

    def keyed_meta(self) -> dict[str, dict[str, Any]]:
        """`_meta.json` `keyed_content` entries of the keyed review columns."""
        return {
            col: {"key": key_column(col), "file": k.file, "slots": k.slots,
                  "scheme": k.scheme, "entity": k.entity}
            for col, k in self.keyed.items()
        }  # fmt: skip

    def row_keys(
        self, user: np.ndarray, item: np.ndarray, lo: int, profile_slot: np.ndarray
    ) -> dict[str, np.ndarray]:
        """The key columns of rows lo.. (their user and item ids and profile slots given)."""
        ids = {"user": user, "item": item}
        out = {}
        for col, k in self.keyed.items():
            if k.by_profile_slot:
                slot = profile_slot
            else:
                assert self.row_slot is not None
                slot = self.row_slot[lo : lo + len(user)].astype(np.int64)
            out[key_column(col)] = ids[k.entity] * k.slots + slot
        return out

    def write_keyed(self, stage: Path) -> None:
        for col, k in self.keyed.items():
            k.write(stage / k.file, col)

    def price_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """(training rows, rows) per item key: weights of the per-key LLM price."""
        assert self.key_train is not None and self.key_rows is not None
        return self.key_train, self.key_rows

    def categories(self, cap: int) -> tuple[pa.ListArray, list[str], int]:
        """The LLM types per item key as `categories` ids: (list<int64> [I * S], vocab, rows cut).

        The vocabulary holds the types of keys that training rows read (training
        reviews of other folds only), id 0 = a type unseen there; the cut count
        counts rows, as a per-row list would.
        """
        assert self.key_types is not None and self.key_train is not None
        assert self.key_rows is not None
        lists, _ = cap_lists(pa.array(self.key_types, pa.list_(pa.string())), cap)
        cut = int(self.key_rows[np.asarray([len(t) for t in self.key_types]) > cap].sum())
        lengths = np.diff(lists.offsets.to_numpy())
        flat = lists.flatten()
        owner = np.repeat(np.arange(len(lengths)), lengths)
        vocab = build_vocab(flat.filter(pa.array(self.key_train[owner] > 0)))
        offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
        ids = pa.ListArray.from_arrays(offsets, pa.array(encode(flat, vocab), pa.int64()))
        return ids, vocab.to_pylist(), cut


def add_row_columns(
    tables: dict[str, pa.Table], codes: np.ndarray, columns: dict[str, np.ndarray]
) -> dict[str, pa.Table]:
    """Append per-row columns (one chunk's rows: the review content's keys) to each split's table."""
    out = {}
    for code, split in enumerate(SPLITS):
        idx = np.nonzero(codes == code)[0]
        out[split] = set_columns(tables[split], {k: v[idx] for k, v in columns.items()})
    return out


def set_columns(table: pa.Table, columns: dict[str, np.ndarray]) -> pa.Table:
    """Vectors as float16 lists, masks as bool, keys as int64."""
    for name, x in columns.items():
        if x.ndim == 2:
            col: pa.Array = vectors(x)
            f = pa.field(name, col.type, nullable=False)
        elif x.dtype == bool:
            col = pa.array(x)
            f = pa.field(name, pa.bool_(), nullable=False)
        else:
            col = pa.array(x.astype(np.int64))
            f = pa.field(name, pa.int64(), nullable=False)
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
    row_group: np.ndarray,
    slots: int,
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
            (features/summaries.py), caption vectors earlier profile blocks.
        seed: the fold hash seed.
        raw_dir: default folder of image files.
        embed: texts -> float16-exact vectors [len, D].
        dim: D.
        row_group: int64 [N] each row's profile slot (the image tables' slot);
        slots: the profile slots S.
    """
    x = _Inputs(
        raw, items, user_names, row_user, row_item, train, timestamps, temporal, seed,
        raw_dir, embed, dim, row_group, slots,
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
    row_group: np.ndarray
    slots: int


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
    """User and item summaries out of fold (the `text` modality), keyed by (entity, slot);
    with an LLM endpoint, also each item key's price category and restaurant types."""
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
    s = k + 1
    out.row_slot = summaries.row_slots(x.train, folds, k)
    scheme = "earlier_blocks" if x.temporal else "out_of_fold"
    for col, entity, e in (("user_text", "user", u), ("item_text", "item", i)):
        out.keyed[col] = KeyedContent(
            entity, s, e.key_summary, e.vecs, scheme, f"entities/{entity}_summaries", False
        )
        vecs, mask = e.entity_vectors(s)
        columns = out.user_columns if entity == "user" else out.item_columns
        columns.update({col: vecs, f"has_{col}": mask})
    item_keys = x.row_item * s + out.row_slot
    out.key_rows = np.bincount(item_keys, minlength=len(item_names) * s)
    out.key_train = np.bincount(item_keys[x.train], minlength=len(item_names) * s)
    user_rows = np.bincount(x.row_user * s + out.row_slot, minlength=len(x.user_names) * s)
    if llm_cfg.base_url:  # offline: price and categories stay the metadata's
        tier = np.asarray([PRICE_CATEGORY_TIER.get(p, np.nan) for p in i.set_price] + [np.nan])
        out.key_price = tier[i.key_set]  # (-1: a key no row reads, the NaN appended)
        out.key_types = [i.set_types[j] if j >= 0 else [] for j in i.key_set.tolist()]
    out.meta["llm"] = {
        **summaries.usage_meta(provider, k, u, i),
        "base_url": llm_cfg.base_url or None,
        "rows_read": (
            "training reviews of earlier time blocks (train rows)"
            if x.temporal
            else "training reviews of other folds (train rows)"
        )
        + "; all training reviews (val/test rows, entities)",
        "rows_with_summary": {
            "user": int(user_rows[u.key_summary >= 0].sum()),
            "item": int(out.key_rows[i.key_summary >= 0].sum()),
        },
        "entities_with_summary": {
            "user": int(out.user_columns["has_user_text"].sum()),
            "item": int(out.item_columns["has_item_text"].sum()),
        },
    }
    log.info("features: llm %s, usage %s", provider.name, provider.usage.to_meta())


def _add_image_content(out: ReviewContent, images_cfg: captions.ImagesConfig, x: _Inputs) -> None:
    """Caption vectors of review and item photos (the `image` modality), keyed by
    (entity, profile slot)."""
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
        row_group=x.row_group,
        slots=x.slots,
        earlier=x.temporal,
    )
    scheme = "earlier_blocks" if x.temporal else "out_of_fold"
    for entity, keys, vecs in (("user", iv.user_keys, iv.user_vecs), ("item", iv.item_keys, iv.item_vecs)):
        out.keyed[f"{entity}_image"] = KeyedContent(
            entity, x.slots, keys, vecs, scheme, f"entities/{entity}_images", True
        )
    out.user_columns.update(user_image=iv.users, has_user_image=iv.users_mask)
    out.item_columns.update(item_image=iv.items, has_item_image=iv.items_mask)
    out.meta["images"] = {
        **iv.meta,
        "rows_read": (
            "photos of reviews in strictly earlier time blocks (any split)"
            if x.temporal
            else "photos of training reviews outside the row's fold (train rows), of all "
            "training reviews (val/test rows)"
        )
        + ", and the item's own photos",
    }
    log.info("features: image captions %s", iv.meta)
