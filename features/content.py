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

What is streamed (docs/features.md "Review content"): one pass over the interactions,
chunk by chunk in index order (`RowChunk`), spills what the two steps need to disk
partitioned by entity (the llm: each training row's fold and text; the images: each
review caption's vector), and writes each row's summary slot to a row-aligned file.
Then each entity partition (features/spill.py `owner_ranges` over `PARTITION_ROWS`)
is processed alone and its keys' vectors written out; per-key arrays (counts, price,
types: entities x slots) are the only tables held whole.  Texts are embedded in one
sorted pass over every partition's (features/embed_runs.py), so the vectors are bit
for bit those of the in-memory build this replaced.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features import captions, llm, summaries
from features.content_rows import Chunks, ContentInputs, RowSlots
from features.examples import cap_lists, vectors
from features.keyed import KeyedReader
from features.split import SPLITS
from features.vocab import build_vocab, encode

log = logging.getLogger("dlrrec.features")


@dataclass
class KeyedContent:
    """One tower column's table of vectors per (entity, slot): key = entity * slots + slot,
    written under the stage folder by its step (features/keyed.py)."""

    entity: str  # "user" | "item"
    slots: int
    scheme: str  # out_of_fold | earlier_blocks
    file: str  # the table's folder, relative to features/
    by_profile_slot: bool  # a row's slot is its profile slot (else its review fold)

    def path(self, stage: Path) -> Path:
        return stage / self.file / "part-00000.parquet"


def key_column(col: str) -> str:
    """The examples' per-row key column of keyed tower column `col`."""
    return f"{col}_key"


@dataclass
class ReviewContent:
    """What the llm/images sections add to a build (arrays in key order; nothing per row)."""

    keyed: dict[str, KeyedContent] = field(default_factory=dict)  # {user,item}_{text,image}
    stage: Path | None = None  # where the keyed tables are
    row_slot: RowSlots | None = None  # each row's review-fold slot (the summaries)
    key_price: np.ndarray | None = None  # float64 [I * S] tier 1..3 per item key, NaN = none
    key_types: pa.ListArray | None = None  # list<string> [I * S] per item key
    key_rows: np.ndarray | None = None  # int64 [I * S] rows reading each item key
    key_train: np.ndarray | None = None  # int64 [I * S] training rows among them
    dim: int = 0
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
        """The key columns of rows lo.. (their user and item ids and profile slots given;
        chunks in row order)."""
        ids = {"user": user, "item": item}
        fold_slot = None
        if any(not k.by_profile_slot for k in self.keyed.values()):
            assert self.row_slot is not None
            fold_slot = self.row_slot.take(lo, len(user)).astype(np.int64)
        out = {}
        for col, k in self.keyed.items():
            slot = profile_slot if k.by_profile_slot else fold_slot
            out[key_column(col)] = ids[k.entity] * k.slots + slot
        return out

    def entity_columns(self, entity: str) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
        """ids (increasing across calls) -> their entity-table columns: each keyed column's
        last slot ([n, D] float32) and its mask ("has_" + column), read from the tables."""
        assert self.stage is not None or not self.keyed
        readers = {col: KeyedReader(k.path(self.stage), k.slots)  # type: ignore[arg-type]
                   for col, k in self.keyed.items() if k.entity == entity}  # fmt: skip

        def take(ids: np.ndarray) -> dict[str, np.ndarray]:
            out = {}
            for col, reader in readers.items():
                out[col], out[f"has_{col}"] = reader.take(ids, self.dim)
            return out

        return take

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
        lists, _ = cap_lists(self.key_types, cap)
        full = np.asarray(pc.list_value_length(self.key_types).fill_null(0))
        cut = int(self.key_rows[full > cap].sum())
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


def build_review_content(
    llm_cfg: llm.LLMConfig | None,
    images_cfg: captions.ImagesConfig | None,
    chunks: Chunks,
    x: ContentInputs,
) -> ReviewContent:
    """Build the llm and images content (either may be None = off), streaming the rows
    (`chunks`) and writing the keyed tables under `x.stage`."""
    out = ReviewContent(stage=x.stage, dim=x.dim)
    if llm_cfg is not None:
        _add_llm_content(out, llm_cfg, chunks, x)
    if images_cfg is not None:
        _add_image_content(out, images_cfg, chunks, x)
    return out


def _add_llm_content(
    out: ReviewContent, llm_cfg: llm.LLMConfig, chunks: Chunks, x: ContentInputs
) -> None:
    """User and item summaries out of fold (the `text` modality), keyed by (entity, slot);
    with an LLM endpoint, also each item key's price category and restaurant types."""
    provider = llm.build_provider(llm_cfg)
    k, s = llm_cfg.folds, llm_cfg.folds + 1
    scheme = "earlier_blocks" if x.temporal else "out_of_fold"
    for entity in ("user", "item"):
        out.keyed[f"{entity}_text"] = KeyedContent(
            entity, s, scheme, f"entities/{entity}_summaries", False
        )
    out.row_slot = RowSlots(x.work / "row-slot.parquet")
    x.work.mkdir(parents=True, exist_ok=True)
    rows = summaries.spill_reviews(chunks, x, k, out.row_slot)
    names = {"user": x.user_names, "item": x.items["item"].combine_chunks()}
    done = {}
    kinds: tuple[Literal["user"], Literal["item"]] = ("user", "item")
    for entity in kinds:
        done[entity] = summaries.summarize(
            provider, entity, names[entity], rows, x, k, out.keyed[f"{entity}_text"].path(x.stage),
            price_tier=_column(x.items, "price_tier") if entity == "item" else None,
            categories=_column(x.items, "categories") if entity == "item" else None,
        )  # fmt: skip
    out.key_rows, out.key_train = rows.key_rows, rows.key_train
    if llm_cfg.base_url:  # offline: price and categories stay the metadata's
        out.key_price, out.key_types = done["item"].key_price, done["item"].key_types
    u, i = done["user"], done["item"]
    out.meta["llm"] = {
        **summaries.usage_meta(provider, k, u.n_sets, i.n_sets),
        "base_url": llm_cfg.base_url or None,
        "rows_read": (
            "training reviews of earlier time blocks (train rows)"
            if x.temporal
            else "training reviews of other folds (train rows)"
        )
        + "; all training reviews (val/test rows, entities)",
        "rows_with_summary": {
            "user": int(rows.user_rows[u.has_summary].sum()),
            "item": int(rows.key_rows[i.has_summary].sum()),
        },
        "entities_with_summary": {
            "user": int(u.has_summary[k::s].sum()),
            "item": int(i.has_summary[k::s].sum()),
        },
    }
    log.info("features: llm %s, usage %s", provider.name, provider.usage.to_meta())


def _column(table: pa.Table, name: str) -> list[Any] | None:
    return table[name].to_pylist() if name in table.column_names else None


def _add_image_content(
    out: ReviewContent, images_cfg: captions.ImagesConfig, chunks: Chunks, x: ContentInputs
) -> None:
    """Caption vectors of review and item photos (the `image` modality), keyed by
    (entity, profile slot)."""
    scheme = "earlier_blocks" if x.temporal else "out_of_fold"
    for entity in ("user", "item"):
        out.keyed[f"{entity}_image"] = KeyedContent(
            entity, x.slots, scheme, f"entities/{entity}_images", True
        )
    n_items = x.items.num_rows
    meta = captions.stream_image_vectors(
        item_captions=_column(x.items, "captions") or [None] * n_items,
        item_images=_column(x.items, "image_urls") or [None] * n_items,
        chunks=chunks,
        n_users=len(x.user_names),
        encoder=x.encoder,
        captioner=captions.build_captioner(images_cfg),
        image_dir=Path(images_cfg.image_dir or x.raw_dir),
        dim=x.dim,
        slots=x.slots,
        earlier=x.temporal,
        work=x.work / "images",
        out={e: out.keyed[f"{e}_image"].path(x.stage) for e in ("user", "item")},
    )
    out.meta["images"] = {
        **meta,
        "rows_read": (
            "photos of reviews in strictly earlier time blocks (any split)"
            if x.temporal
            else "photos of training reviews outside the row's fold (train rows), of all "
            "training reviews (val/test rows)"
        )
        + ", and the item's own photos",
    }
    log.info("features: image captions %s", meta)
