"""Training data: the features/similarity artifacts in memory, and rank-sharded batches.

Shape legend: B = local batch size, F = sparse features, R = towers whose vector is
per row (an images section's `row_content` vectors), C = content dim (384), Dd = dense
features, M = extra negatives.

Entity vectors (the item tower's input and every InfoNCE vector) are not held in
memory: each rank's reader thread reads its local batch's rows from the disk-backed
stores (`trainer/vector_store.py`) and the batch carries them (`Batch.vectors`). The
SWING lists that InfoNCE samples positives from are disk-backed too
(`trainer/neighbor_store.py`): a batch reads its anchors' lists only.

Every rank sees the same seeded global permutation of the split each epoch and takes
its own contiguous slice of each global batch, so 1 rank and N ranks walk the data in
the same global order. Eval batches are padded to equal size on every rank (padding
rows have weight 0) because the sharded embedding all-to-all wants equal batches.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from torchrec.streamable import Pipelineable

from dlrrec.arrow import rechunk
from dlrrec.config import ConfigError, DataError
from dlrrec.meta import (
    FeaturesMeta,
    KeyedContentMeta,
    SimilarityMeta,
    entity_count,
    keyed_entity,
    read_features_meta,
    read_similarity_meta,
)
from trainer.layout import history_sources
from trainer.neighbor_store import NeighborStore, open_neighbors
from trainer.vector_store import KINDS, VectorStore, feature_key, fixed_list_to_numpy, open_store

# Towers in a fixed order: (modality, entity, column)
TOWER_COLUMNS = {
    "text": [("user", "user_text"), ("item", "item_text")],
    "image": [("user", "user_image"), ("item", "item_image")],
}


@dataclass
class PairBatch:
    """One InfoNCE pair kind's part of a batch: item-item (`Batch.ii`) or user-user (`Batch.uu`).

    Shapes: B = local batch, M = extra negatives, S = the positive sets' ids.

    Args:
        pos_ids: [B] the id of each anchor's sampled SWING positive (-1 when it has no
            neighbour, and for padding rows).
        pos_q: [B] the probability that one draw of the positive sampler gives that
            entity (for logQ correction).
        neg_ids: [M] extra negatives drawn uniformly from the catalogue, shared by every
            row of the global batch (M = 0 without mixed negatives).
        neg_q: [M] their positive-sampler probabilities.
        set_lengths: [B] and set_ids: [S]: each anchor's whole SWING list as CSR rows
            (all lengths 0 unless positive-set masking is on).
    """

    pos_ids: torch.Tensor
    pos_q: torch.Tensor
    neg_ids: torch.Tensor
    neg_q: torch.Tensor
    set_lengths: torch.Tensor
    set_ids: torch.Tensor

    def apply(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> PairBatch:
        """`fn` of every tensor (a device move, pinning)."""
        return PairBatch(**{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    def tensors(self) -> list[torch.Tensor]:
        return [getattr(self, f.name) for f in fields(self)]

    def rows(self, sl: slice) -> PairBatch:
        """Rows `sl`; the extra negatives are shared by the whole global batch: kept whole."""
        offsets = torch.cat([self.set_lengths.new_zeros(1), self.set_lengths.cumsum(0)])
        return PairBatch(
            pos_ids=self.pos_ids[sl],
            pos_q=self.pos_q[sl],
            neg_ids=self.neg_ids,
            neg_q=self.neg_q,
            set_lengths=self.set_lengths[sl],
            set_ids=self.set_ids[int(offsets[sl.start]) : int(offsets[sl.stop])],
        )


@dataclass
class Batch(Pipelineable):
    """One local batch. Shapes: dense [B, Dd], content [B, R, C] (the per-row tower
    vectors), the rest [B] unless stated.

    `vectors` holds the entity vectors the model needs, float16, read from the stores
    (`lookup_vectors`): `{col}/row` [B] the rows' items (and users), `{col}/pos` [B] the
    sampled positives, `{col}/neg` [M] the extra negatives (shared by the global batch).
    `ii` / `uu` are the item-item / user-user InfoNCE inputs (`PairBatch`); their
    anchors are `item_ids` / `user_ids`.
    """

    dense: torch.Tensor
    sparse: KeyedJaggedTensor
    vectors: dict[str, torch.Tensor]
    content: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor
    ratings: torch.Tensor
    item_ids: torch.Tensor
    user_ids: torch.Tensor
    ii: PairBatch
    uu: PairBatch

    _ROW_TENSORS = ("dense", "content", "labels", "weights", "ratings", "item_ids", "user_ids")

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], kjt: Callable[[KeyedJaggedTensor], KeyedJaggedTensor]) -> Batch:
        return Batch(
            **{n: fn(getattr(self, n)) for n in self._ROW_TENSORS},
            sparse=kjt(self.sparse), vectors={k: fn(v) for k, v in self.vectors.items()},
            ii=self.ii.apply(fn), uu=self.uu.apply(fn),
        )  # fmt: skip

    def to(self, device: torch.device, non_blocking: bool = False) -> Batch:
        return self._apply(
            lambda t: t.to(device=device, non_blocking=non_blocking),
            lambda k: k.to(device=device, non_blocking=non_blocking),
        )

    def record_stream(self, stream: torch.Stream) -> None:
        row = [getattr(self, n) for n in self._ROW_TENSORS]
        for t in [*row, *self.vectors.values(), *self.ii.tensors(), *self.uu.tensors()]:
            t.record_stream(stream)
        self.sparse.record_stream(stream)

    def pin_memory(self) -> Batch:
        return self._apply(lambda t: t.pin_memory(), lambda k: k.pin_memory())


@dataclass
class SplitArrays:
    """One split as column arrays; multi-valued sparse features as CSR (offsets, values)."""

    n: int
    user_id: np.ndarray
    item_id: np.ndarray
    label: np.ndarray
    dense: np.ndarray  # [n, Dd] float32
    single: dict[str, np.ndarray]  # name -> [n] int64
    multi: dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (offsets [n+1], values)
    user_content: dict[str, np.ndarray]  # column -> [n, C] float16 (per-row, leakage-free)
    # keyed tower column -> int64 [n] row keys into its per-(entity, slot) table
    keys: dict[str, np.ndarray] = field(default_factory=dict)
    # the training rows' 1-5 rating (the rating head's target); None for val/test: never read
    rating: np.ndarray | None = None


@dataclass
class TrainingData:
    """Everything the trainer reads, loaded once per rank."""

    features_meta: FeaturesMeta
    similarity_meta: SimilarityMeta | None
    parts: dict[str, SplitParts]  # train/val/test, read block by block
    row_content: list[str]  # tower columns read per row from the examples
    keyed_content: dict[str, KeyedContentMeta]  # tower columns looked up by each row's key: spec
    train_rows: dict[str, np.ndarray]  # entity -> [n] its training rows (features' counts)
    sparse_names: list[str]
    sparse_vocab: dict[str, int]
    dense_names: list[str]
    towers: list[tuple[str, str]]  # (entity, column)
    entity_columns: dict[str, VectorStore]  # the stores of `entity_tables`, on disk
    entity_tables: list[str]  # the columns whose vectors the batch carries (`Batch.vectors`)
    item_neighbors: NeighborStore | None  # SWING lists, on disk (trainer/neighbor_store.py)
    user_neighbors: NeighborStore | None
    # `train.history_content`: (bag, index of the tower that projects it), after the towers
    history_slots: list[tuple[str, int]] = field(default_factory=list)
    _sampler_cache: dict[tuple[str, bool], tuple[np.ndarray, np.ndarray]] = field(
        default_factory=dict, repr=False
    )

    @property
    def content_dim(self) -> int:
        return int(self.features_meta["content_dim"])

    def per_row(self, col: str) -> bool:
        """Whether tower column `col` is read per row from the examples (else from its table)."""
        return col in self.row_content

    def arrays(self, table: pa.Table, split: str) -> SplitArrays:
        where = str(self.parts[split].folder)
        return split_arrays(table, self.features_meta, self.row_content, self.keyed_content, where)

    def read_rows(self, split: str, lo: int = 0, hi: int | None = None) -> SplitArrays:
        """Rows [lo, hi) of `split` in file order (all by default): for tests and tools;
        training and evaluation stream blocks instead (`train_batches`, `eval_batches`)."""
        parts = self.parts[split]
        hi = parts.n if hi is None else hi
        tables = list(read_range(parts, np.arange(len(parts.blocks)), lo, hi, None))
        return self.arrays(pa.concat_tables(tables) if tables else parts.empty(), split)

    def keyed(self, col: str) -> bool:
        """Whether tower column `col` is looked up by the row's key in a per-(entity, slot) table."""
        return col in self.keyed_content

    def tower_spec(self) -> list[tuple[str, str]]:
        """(column, input) of each tower in tower order (what `DLRRECTrain` assembles):
        input "" = `Batch.content`, else the `Batch.vectors` key its vectors come from."""
        return [
            (c, "" if self.per_row(c) else feature_key(keyed_table(c) if self.keyed(c) else c, "row"))
            for _, c in self.towers
        ] + [(bag, feature_key(bag, "row")) for bag, _ in self.history_slots]

    def sampler_tables(self, entity: str, top1: bool) -> tuple[np.ndarray, np.ndarray]:
        """(q, catalogue) of `entity`'s InfoNCE: q [n] is the positive sampler's marginal
        (`NeighborStore.marginal` over the train rows' anchors, counted by the features stage),
        catalogue the ids of the
        entities that have a content vector (the uniform extra-negative pool)."""
        key = (entity, top1)
        if key not in self._sampler_cache:
            nb = self.item_neighbors if entity == "item" else self.user_neighbors
            col = next(c for e, c in self.towers if e == entity)
            has_content = self.entity_columns[col].has_content
            n = has_content.size
            counts = np.zeros(n, np.int64)
            counts[: min(n, self.train_rows[entity].size)] = self.train_rows[entity][:n]
            q = nb.marginal(counts, top1) if nb is not None else np.zeros(n)
            catalogue = np.flatnonzero(has_content)
            self._sampler_cache[key] = (q, catalogue)
        return self._sampler_cache[key]


def keyed_table(col: str) -> str:
    """The content table of a keyed column's per-(entity, slot) rows (its entity table keeps `col`)."""
    return f"{col}_keyed"


@dataclass
class SplitParts:
    """A split's Parquet row groups ("blocks") in file order, from the footers only.

    Block k holds split rows [offsets[k], offsets[k + 1]); `columns` are the columns a
    batch needs. Reading goes one block at a time (`read_block`), so memory follows the
    row-group size, never the split's row count.
    """

    name: str
    folder: Path
    files: list[Path]
    blocks: list[tuple[int, int]]  # (file index, row group)
    offsets: np.ndarray  # [n_blocks + 1] int64
    columns: list[str]

    @property
    def n(self) -> int:
        return int(self.offsets[-1])

    def empty(self) -> pa.Table:
        return pq.read_schema(self.files[0]).empty_table().select(self.columns)

    def read_block(self, k: int) -> pa.Table:
        f, g = self.blocks[k]
        return pq.ParquetFile(self.files[f]).read_row_group(g, columns=self.columns)


def scan_parts(
    root: Path, split: str, meta: FeaturesMeta, content_cols: list[str], key_cols: dict[str, str]
) -> SplitParts:
    """The footers of `root/examples/split/part-*.parquet`: blocks, row counts, columns."""
    folder = root / "examples" / split
    files = sorted(folder.glob("part-*.parquet"))
    if not files:
        raise DataError(f"{folder}: no part-*.parquet files; run `dlrrec features build` first")
    need = ["user_id", "item_id", "label", *meta["dense_features"], *content_cols, *key_cols.values()]
    need += [n for n in meta["sparse_features"] if n not in ("user_id", "item_id")]
    blocks: list[tuple[int, int]] = []
    sizes: list[int] = []
    has_rating = True
    for i, path in enumerate(files):
        pf = pq.ParquetFile(path)
        md = pf.metadata
        names = set(pf.schema_arrow.names)
        missing = [c for c in need if c not in names]
        if missing:
            raise DataError(f"{folder}: missing column {missing[0]!r} in {path.name}")
        has_rating &= "rating" in names
        for g in range(md.num_row_groups):
            blocks.append((i, g))
            sizes.append(md.row_group(g).num_rows)
    # the 1-5 rating is the rating head's target: read for training rows only
    columns = [*dict.fromkeys(need)] + (["rating"] if split == "train" and has_rating else [])
    offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)
    return SplitParts(split, folder, files, blocks, offsets, columns)


def split_arrays(
    table: pa.Table, meta: FeaturesMeta, content_cols: list[str], keyed: dict[str, KeyedContentMeta], where: str
) -> SplitArrays:
    """Rows of a split (a block, a batch's rows) as column arrays; `keyed` maps each
    keyed tower column to its `_meta.json` spec (key column, slots per user).

    Raises:
        DataError: NaN/inf dense values, or a key outside its user's slots.
    """
    single: dict[str, np.ndarray] = {}
    multi: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, spec in meta["sparse_features"].items():
        col = table.column(name).combine_chunks()
        if spec.get("multi_valued"):
            offsets = col.offsets.to_numpy().astype(np.int64)
            values = col.values.to_numpy().astype(np.int64)
            multi[name] = (offsets - offsets[0], values[offsets[0] : offsets[-1]])
        else:
            single[name] = col.to_numpy().astype(np.int64)
    dense = (
        np.stack([table.column(n).to_numpy().astype(np.float32) for n in meta["dense_features"]], 1)
        if meta["dense_features"]
        else np.zeros((table.num_rows, 0), np.float32)
    )
    if not np.isfinite(dense).all():
        raise DataError(f"{where}: NaN or inf in dense features")
    return SplitArrays(
        n=table.num_rows,
        user_id=table.column("user_id").to_numpy().astype(np.int64),
        item_id=table.column("item_id").to_numpy().astype(np.int64),
        label=table.column("label").to_numpy().astype(np.float32),
        dense=dense,
        single=single,
        multi=multi,
        user_content={c: fixed_list_to_numpy(table.column(c), f"{where}:{c}") for c in content_cols},
        keys={c: row_keys(table, c, spec, where) for c, spec in keyed.items()},
        rating=(
            table.column("rating").to_numpy().astype(np.float32)
            if "rating" in table.column_names
            else None
        ),
    )


def row_keys(table: pa.Table, col: str, spec: KeyedContentMeta, where: str) -> np.ndarray:
    """The rows' keys into `col`'s per-(entity, slot) table, each checked to be one of
    its own entity's (the row's user or item) slots."""
    k = table.column(spec["key"]).to_numpy().astype(np.int64)
    slots, entity = int(spec["slots"]), keyed_entity(spec)
    if k.size and (k.min() < 0 or (k // slots != table.column(f"{entity}_id").to_numpy()).any()):
        raise DataError(
            f"{where}:{spec['key']}: keys outside their {entity}'s slots "
            f"[{entity} * {slots}, {entity} * {slots} + {slots}) of {spec['file']}"
        )
    return k


def check_similarity_input(sim_root: Path, sim_meta: SimilarityMeta, features_meta: FeaturesMeta) -> None:
    """Refuse SWING tables that were not built from this features artifact.

    `similarity/_meta.json` records the fingerprint of the input SWING read. Tables of
    another features build (another seed or split) would hand InfoNCE positives from rows
    that are val/test rows here; tables of a plain `input=` file are tied to no features
    artifact (nor to its dense ids), so they are refused too.

    Raises:
        DataError: naming `similarity/_meta.json`, both fingerprints and the fix.
    """
    recorded = (sim_meta.get("input") or {}).get("fingerprint")
    want = features_meta.get("fingerprint")
    if recorded is None or recorded != want:
        source = (sim_meta.get("input") or {}).get("source", "an unrecorded input")
        raise DataError(
            f"{sim_root / '_meta.json'}: these SWING tables were built from {source} (input "
            f"fingerprint {str(recorded)[:12]}), not from this run's features (fingerprint "
            f"{str(want)[:12]}); rerun `dlrrec similarity swing` on this run_dir (overwrite=true)"
        )


def read_keyed_column(root: Path, col: str, spec: KeyedContentMeta, meta: FeaturesMeta) -> VectorStore:
    """The store of a keyed column's per-(entity, slot) table; each row's key is checked
    against its entity's slots as its block is read (`split_arrays`)."""
    n = entity_count(meta, keyed_entity(spec)) * int(spec["slots"])
    dim = int(meta["content_dim"])
    return open_store(root, meta["fingerprint"], keyed_table(col), root / spec["file"], "key", col, n, dim)


def read_train_rows(root: Path, entity: str, n: int) -> np.ndarray:
    """[n] int64: each `entity`'s training rows, from the features stage's per-entity
    counts (`counts/{entity}s.parquet`), so no rank reads every row to count them."""
    path = root / "counts" / f"{entity}s.parquet"
    if not path.is_file():
        raise DataError(f"{path}: missing; rebuild the features with this version (`dlrrec features build`)")
    t = pq.read_table(path, columns=[f"{entity}_id", "train_rows"])
    ids = t.column(0).to_numpy()
    if ids.size and (ids.min() < 0 or ids.max() >= n):
        raise DataError(f"{path}:{entity}_id: ids outside [0, {n}) (n_{entity}s in _meta.json)")
    out = np.zeros(n, np.int64)
    out[ids] = t.column(1).to_numpy()
    return out


def modality_towers(root: Path, meta: FeaturesMeta, modalities: list[str]) -> list[tuple[str, str]]:
    """(entity, column) of every tower the modalities need, in `TOWER_COLUMNS` order.

    Raises:
        DataError: the features lack a modality's content column.
    """
    towers: list[tuple[str, str]] = []
    available = {e: set(meta["content"].get(e, [])) for e in ("user", "item")}
    for m in modalities:
        for entity, col in TOWER_COLUMNS[m]:
            if col not in available[entity]:
                raise DataError(
                    f"{root}/_meta.json: modality {m!r} needs content column {col!r}, "
                    f"which this dataset lacks (has {sorted(available[entity])})"
                )
            towers.append((entity, col))
    return towers


def entity_store(root: Path, meta: FeaturesMeta, entity: str, col: str) -> VectorStore:
    """The disk-backed store of `entity`'s content column `col` (written from
    `entities/{entity}s.parquet` on first use, checked: trainer/vector_store.py)."""
    path = root / "entities" / f"{entity}s.parquet"
    n, dim = entity_count(meta, entity), int(meta["content_dim"])
    return open_store(root, meta["fingerprint"], col, path, f"{entity}_id", col, n, dim)


def scan_entity_columns(
    root: Path, meta: FeaturesMeta, towers: list[tuple[str, str]], keyed: dict[str, KeyedContentMeta],
    tables: list[str],
) -> dict[str, VectorStore]:
    """The stores of the columns in `tables` (the batches read their rows): tower
    columns' entity vectors and keyed columns' per-(entity, slot) tables.

    Raises:
        DataError: an entity table is missing or invalid, or a store is foreign or stale.
    """
    entity_columns = {c: entity_store(root, meta, e, c) for e, c in towers if c in tables}
    for c, spec in keyed.items():
        entity_columns[keyed_table(c)] = read_keyed_column(root, c, spec, meta)
    return entity_columns


def read_training_data(run_dir: str | Path, modalities: list[str], contrastive: bool) -> TrainingData:
    """Load `run_dir/features` (and `run_dir/similarity` when `contrastive`)."""
    root = Path(run_dir) / "features"
    meta = read_features_meta(root)
    towers = modality_towers(root, meta, modalities)
    # User profiles and llm summaries are looked up by each row's key in a per-(entity,
    # slot) table; image vectors built from reviews (leave-own-out) are still per row.
    keyed = {c: spec for c, spec in meta.get("keyed_content", {}).items() if c in {x for _, x in towers}}
    user_cols = [
        c for e, c in towers if (e == "user" and c not in keyed) or c in meta.get("row_content", ())
    ]
    key_cols = {c: spec["key"] for c, spec in keyed.items()}
    parts = {s: scan_parts(root, s, meta, user_cols, key_cols) for s in ("train", "val", "test")}
    for s, p in parts.items():
        if "rows" in meta and int(meta["rows"][s]) != p.n:
            raise DataError(f"{p.folder}: {p.n} rows, _meta.json says {meta['rows'][s]}; rebuild the features")
    train_rows = {e: read_train_rows(root, e, entity_count(meta, e)) for e in ("user", "item")}
    # tables: towers whose vector is neither per row nor keyed, each keyed tower's
    # per-(entity, slot) table, and each entity's InfoNCE column
    first = {e: next((c for x, c in towers if x == e), None) for e in ("user", "item")}
    entity_tables = [
        t
        for e, c in towers
        for t in ([keyed_table(c)] if c in keyed else [])
        + ([c] if (c not in user_cols and c not in keyed) or (contrastive and c == first[e]) else [])
    ]
    entity_columns = scan_entity_columns(root, meta, towers, keyed, entity_tables)
    sim_meta = None
    item_nb = user_nb = None
    if contrastive:
        sim_root = Path(run_dir) / "similarity"
        sim_meta = read_similarity_meta(sim_root)
        check_similarity_input(sim_root, sim_meta, meta)
        item_nb = open_neighbors(sim_root, "item_item", sim_meta["fingerprint"], int(meta["n_items"]))
        user_nb = open_neighbors(sim_root, "user_user", sim_meta["fingerprint"], int(meta["n_users"]))
    sparse_names = list(meta["sparse_features"])
    return TrainingData(
        features_meta=meta,
        similarity_meta=sim_meta,
        parts=parts,
        row_content=user_cols,
        keyed_content=keyed,
        train_rows=train_rows,
        sparse_names=sparse_names,
        sparse_vocab={n: int(s["vocab_size"]) for n, s in meta["sparse_features"].items()},
        dense_names=list(meta["dense_features"]),
        towers=towers,
        entity_columns=entity_columns,
        entity_tables=entity_tables,
        item_neighbors=item_nb,
        user_neighbors=user_nb,
    )


def with_history_content(data: TrainingData, bags: list[str]) -> TrainingData:
    """`data` with each of `bags` (history bags) also read as content, projected by the
    tower of the entity its members are (`train.history_content`).

    Raises:
        DataError: a bag the features lack, or whose members have no entity tower.
    """
    root = data.parts["train"].folder.parent.parent
    spec = data.features_meta["sparse_features"]
    slots = history_sources(spec, data.towers, bags, f"{root}/_meta.json")
    stores = dict(data.entity_columns)
    for bag, tower in slots:
        entity, col = data.towers[tower]
        if data.per_row(col) or data.keyed(col):
            raise DataError(
                f"{root}/_meta.json: train.history_content: bag {bag!r} lists {entity}s, "
                f"which have no {entity} tower over one vector per {entity}"
            )
        if col not in stores:
            stores[col] = entity_store(root, data.features_meta, entity, col)
    return replace(data, history_slots=slots, entity_columns=stores)


def pooled_bag(store: VectorStore, split: SplitArrays, bag: str, rows: np.ndarray) -> np.ndarray:
    """float16 [B, C]: each row's mean content vector over the members of its history
    bag (0 for an empty bag); one store read of the batch's distinct members."""
    offsets, values = split.multi[bag]
    lengths, members = _gather_csr(offsets, values, rows)
    if members.size == 0:
        return np.zeros((rows.size, store.dim), np.float16)
    distinct, inverse = np.unique(members, return_inverse=True)
    vectors = store.read(distinct).astype(np.float32)
    # the means as one sparse [B, distinct] @ [distinct, C] product: no [members, C] copy
    weights = np.repeat(1.0 / np.maximum(lengths, 1), lengths).astype(np.float32)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    mean = sp.csr_matrix((weights, inverse, indptr), shape=(rows.size, distinct.size)) @ vectors
    return np.asarray(mean, np.float32).astype(np.float16)


def _gather_csr(offsets: np.ndarray, values: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lengths and concatenated values of `rows` of a CSR array (vectorised)."""
    start = offsets[rows]
    lengths = offsets[rows + 1] - start
    total = int(lengths.sum())
    if total == 0:
        return lengths, np.zeros(0, np.int64)
    # index of each output value: start of its row + position within the row
    row_of = np.repeat(np.arange(rows.size), lengths)
    within = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return lengths, values[start[row_of] + within]


@dataclass(frozen=True)
class PairKind:
    """One InfoNCE pair kind as `make_batch` draws it.

    Args:
        entity: "item" or "user".
        column: its tower's content column ("" when no tower is of this entity).
        neighbors: its SWING lists; None when the kind is off (no pairs or no tower).
    """

    entity: str
    column: str
    neighbors: NeighborStore | None


def pair_kinds(data: TrainingData, draw: bool) -> tuple[PairKind, PairKind]:
    """The item-item and user-user kinds, in the order their random draws are made;
    both off when not `draw` (evaluation)."""
    item, user = (next((c for e, c in data.towers if e == entity), "") for entity in ("item", "user"))
    return (
        PairKind("item", item, data.item_neighbors if item and draw else None),
        PairKind("user", user, data.user_neighbors if user and draw else None),
    )


def sparse_kjt(data: TrainingData, split: SplitArrays, rows: np.ndarray) -> KeyedJaggedTensor:
    """The rows' sparse features, one bag per row and feature (multi-valued ones from CSR)."""
    lengths, values = [], []
    for name in data.sparse_names:
        if name == "user_id":
            lengths.append(np.ones(rows.size, np.int64))
            values.append(split.user_id[rows])
        elif name == "item_id":
            lengths.append(np.ones(rows.size, np.int64))
            values.append(split.item_id[rows])
        elif name in split.single:
            lengths.append(np.ones(rows.size, np.int64))
            values.append(split.single[name][rows])
        else:
            offs, vals = split.multi[name]
            ln, vl = _gather_csr(offs, vals, rows)
            lengths.append(ln)
            values.append(vl)
    return KeyedJaggedTensor.from_lengths_sync(
        keys=list(data.sparse_names),
        values=torch.from_numpy(np.concatenate(values)),
        lengths=torch.from_numpy(np.concatenate(lengths).astype(np.int32)),
    )


def tower_lookups(
    data: TrainingData, split: SplitArrays, rows: np.ndarray, anchors: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The entity ids of the towers whose vector is not per row: {vector key: ids [B]}."""
    lookups: dict[str, np.ndarray] = {}
    for entity, col in data.towers:
        if data.keyed(col):  # a tower input: the row's own (entity, slot) row
            lookups[feature_key(keyed_table(col), "row")] = split.keys[col][rows]
        elif not data.per_row(col) and col in data.entity_tables:  # a tower input: the row's entity
            lookups[feature_key(col, "row")] = anchors[entity]
    return lookups


def sample_positives(
    kind: PairKind,
    anchors: np.ndarray,
    rng: np.random.Generator | LaneRng | None,
    top1: bool,
    lookups: dict[str, np.ndarray],
) -> np.ndarray:
    """Each anchor's SWING positive [B] (-1: none); adds the lookups of their vectors."""
    if kind.neighbors is None or rng is None:
        return np.full(anchors.size, -1, np.int64)
    pos_ids = kind.neighbors.sample(anchors, rng, top1)
    if kind.entity == "user":
        lookups[feature_key(kind.column, "row")] = anchors  # the anchor: the user's full train profile
    lookups[feature_key(kind.column, "pos")] = np.maximum(pos_ids, 0)
    return pos_ids


def draw_negatives(
    data: TrainingData,
    kind: PairKind,
    pos_ids: np.ndarray,
    rng: np.random.Generator | LaneRng | None,
    top1: bool,
    m: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pos_q [B], neg_ids [M], neg_q [M]): the positives' sampler probabilities and `m`
    extra negatives drawn uniformly from the catalogue (none when `m` is 0)."""
    pos_q, neg_ids, neg_q = np.zeros(pos_ids.size), np.zeros(0, np.int64), np.zeros(0)
    if kind.neighbors is None or rng is None:
        return pos_q, neg_ids, neg_q
    q, catalogue = data.sampler_tables(kind.entity, top1)
    pos_q = np.where(pos_ids >= 0, q[np.maximum(pos_ids, 0)], 0.0)
    if m > 0 and catalogue.size:
        neg_ids = catalogue[rng.integers(0, catalogue.size, m)]
        neg_q = q[neg_ids]
    return pos_q, neg_ids, neg_q


def positive_set(kind: PairKind, anchors: np.ndarray, on: bool) -> tuple[np.ndarray, np.ndarray]:
    """Each anchor's whole SWING list as CSR (lengths [B], ids); empty rows when off."""
    if on and kind.neighbors is not None:
        return kind.neighbors.neighbor_sets(anchors)
    return np.zeros(anchors.size, np.int64), np.zeros(0, np.int64)


def lookup_vectors(data: TrainingData, lookups: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """{`{col}/{kind}`: float16 [ids, C]} for every store column the batch carries and
    every kind (0 rows where `lookups` has none): one store read per column, over the
    union of its row, positive and negative ids."""
    out: dict[str, torch.Tensor] = {}
    for col in data.entity_tables:
        keys = [feature_key(col, kind) for kind in KINDS]
        ids = [lookups.get(k, np.zeros(0, np.int64)) for k in keys]
        vec = torch.from_numpy(data.entity_columns[col].read(np.concatenate(ids)))
        out.update(zip(keys, torch.split(vec, [i.size for i in ids])))
    return out


def make_batch(
    data: TrainingData,
    split: SplitArrays,
    rows: np.ndarray,
    valid: np.ndarray,
    rng: np.random.Generator | LaneRng | None,
    top1: bool,
    extra_negatives: int = 0,
    positive_sets: bool = False,
) -> Batch:
    """Assemble one batch from split rows (row ids repeat for padding; `valid` masks them).

    `extra_negatives` M entities per InfoNCE are drawn uniformly from the catalogue
    after the positives, so M = 0 leaves the random stream (and any run) unchanged.
    `positive_sets` adds each anchor's SWING list, for masking all of it as negatives.
    `rng` None draws no InfoNCE inputs at all (no positives, negatives or sets; every
    `pos_ids` is -1): evaluation needs only the logits, and the model in eval mode
    computes no InfoNCE terms.
    """
    anchors = {"item": split.item_id[rows], "user": split.user_id[rows]}
    lookups = tower_lookups(data, split, rows, anchors)
    kinds = pair_kinds(data, draw=rng is not None)
    # every kind's positives before any negatives (the order of the draws above)
    positives = [sample_positives(k, anchors[k.entity], rng, top1, lookups) for k in kinds]
    pairs = []
    for kind, pos_ids in zip(kinds, positives):
        pos_ids = np.where(valid, pos_ids, -1)
        pos_q, neg_ids, neg_q = draw_negatives(data, kind, pos_ids, rng, top1, extra_negatives)
        if neg_ids.size:
            lookups[feature_key(kind.column, "neg")] = neg_ids
        lengths, set_ids = positive_set(kind, anchors[kind.entity], positive_sets)
        arrays = (pos_ids, pos_q, neg_ids, neg_q, lengths, set_ids)
        dtypes = (np.int64, np.float32, np.int64, np.float32, np.int64, np.int64)
        pairs.append(PairBatch(*(torch.from_numpy(a.astype(t)) for a, t in zip(arrays, dtypes))))
    b = rows.size
    # per-row tower vectors; the others come from the stores (`vectors`)
    content = [split.user_content[col][rows] for _, col in data.towers if data.per_row(col)]
    content_arr = np.stack(content, 1) if content else np.zeros((b, 0, data.content_dim), np.float16)
    ratings = split.rating[rows] if split.rating is not None else np.zeros(b, np.float32)
    vectors = lookup_vectors(data, lookups)
    for bag, tower in data.history_slots:
        store = data.entity_columns[data.towers[tower][1]]
        vectors[feature_key(bag, "row")] = torch.from_numpy(pooled_bag(store, split, bag, rows))
    return Batch(
        dense=torch.from_numpy(split.dense[rows]),
        sparse=sparse_kjt(data, split, rows),
        vectors=vectors,
        content=torch.from_numpy(content_arr.astype(np.float32)),
        labels=torch.from_numpy(split.label[rows]),
        weights=torch.from_numpy(valid.astype(np.float32)),
        ratings=torch.from_numpy(ratings),
        item_ids=torch.from_numpy(anchors["item"]),
        user_ids=torch.from_numpy(anchors["user"]),
        ii=pairs[0],
        uu=pairs[1],
    )


def epoch_steps(n_rows: int, global_batch: int, max_steps: int = 0) -> int:
    """Training steps in one epoch: full global batches, capped at `max_steps` when > 0."""
    steps = n_rows // global_batch
    return min(steps, max_steps) if max_steps else steps


LANES = 8  # row streams per global batch by default (train.data_lanes); the world size must divide it
PREFETCH = 4  # batches a rank's reader thread keeps ready
# The training reader thread runs below its step's priority. It keeps PREFETCH batches
# ready, so it need not run the moment a batch is taken: with as many ranks as cores
# (2 on 2 here) it then fills the cores' idle time (a rank waiting in a collective)
# instead of taking a core from a rank's step, which every other rank then waits for.
READER_NICE = 10
_BLOCK_TAG = 2**31  # keeps block-permutation seeds apart from (seed, epoch, step, lane) ones


def lane_layout(global_batch: int, world_size: int, lanes: int = LANES) -> int:
    """Rows per lane and step; `global_batch` and `world_size` must fit the lanes.

    Raises:
        ConfigError: the batch or the world size does not divide into `lanes` lanes.
    """
    if lanes < 1 or lanes % world_size:
        raise ConfigError(
            f"train.data_lanes: world size {world_size} must divide the {lanes} data lanes "
            f"(set train.data_lanes to a multiple of {world_size})"
        )
    if global_batch % lanes:
        raise ConfigError(f"train.batch_size: {global_batch} is not a multiple of the {lanes} data lanes")
    return global_batch // lanes


class LaneRng:
    """The random draws of one rank's local batch, whatever the rank count.

    `random` (the per-row uniforms of positive sampling) concatenates draws from one
    generator per lane, seeded by (seed, epoch, step, lane); `integers` (the extra
    negatives, shared by the whole global batch) comes from one seeded by (seed, epoch,
    step). So a lane's rows draw the same positives on any rank that owns it.
    """

    def __init__(self, seed: int, epoch: int, step: int, lanes: range, per_lane: int) -> None:
        self.lanes = [np.random.default_rng([seed, epoch, step, lane]) for lane in lanes]
        self.per_lane = per_lane
        self.shared = np.random.default_rng([seed, epoch, step])

    def random(self, shape: tuple[int, ...]) -> np.ndarray:
        if shape != (len(self.lanes) * self.per_lane,):
            raise ValueError(f"LaneRng.random: shape {shape} is not this rank's lanes' rows")
        return np.concatenate([g.random(self.per_lane) for g in self.lanes])

    def integers(self, low: int, high: int, size: int) -> np.ndarray:
        return self.shared.integers(low, high, size)


def read_range(
    parts: SplitParts, order: np.ndarray, lo: int, hi: int, shuffle: tuple[int, int] | None
) -> Iterator[pa.Table]:
    """Rows [lo, hi) of the stream made of `parts`' blocks in `order`, block by block.

    With `shuffle` = (seed, epoch) each block's rows are permuted by a generator seeded
    by (seed, epoch, block), so any reader of any range sees the same stream. Only the
    blocks that overlap the range are read.
    """
    sizes = np.diff(parts.offsets)[order]
    ends = np.cumsum(sizes)
    k = int(np.searchsorted(ends, lo, side="right"))
    start = int(ends[k - 1]) if k else 0
    while lo < hi and k < order.size:
        block = int(order[k])
        table = parts.read_block(block)
        if shuffle is not None:
            perm = np.random.default_rng([*shuffle, _BLOCK_TAG, block]).permutation(table.num_rows)
            table = table.take(perm)
        a, b = lo - start, min(hi, start + table.num_rows) - start
        if b > a:
            yield table.slice(a, b - a)
        lo = max(lo, start + b)
        start += table.num_rows
        k += 1


T = TypeVar("T")


def lower_priority(nice: int) -> None:
    """Raise the calling thread's nice value by `nice` (a thread is its own scheduling
    entity on Linux: PRIO_PROCESS with a thread id). Lowering one's own priority needs no
    privileges; where thread ids are not scheduling entities this does nothing."""
    if nice <= 0 or not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    os.setpriority(os.PRIO_PROCESS, tid, min(os.getpriority(os.PRIO_PROCESS, tid) + nice, 19))


def prefetched(it: Iterator[T], depth: int = PREFETCH, nice: int = 0) -> Iterator[T]:
    """`it` run by a background thread that keeps up to `depth` items ready, so the
    training step does not wait on Parquet; its errors are raised here. Closing (or
    dropping) this generator stops the thread. `nice` > 0 lowers the thread's own
    scheduling priority (Linux; elsewhere ignored), not the process's."""
    q: queue.Queue[tuple[Any, BaseException | None]] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(item: tuple[Any, BaseException | None]) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            lower_priority(nice)
            for x in it:
                if not put((x, None)):
                    return
            put((end, None))
        except BaseException as e:  # noqa: BLE001 -- handed to the consumer
            put((None, e))

    threading.Thread(target=work, daemon=True, name="dlrrec-reader").start()
    try:
        while True:
            x, err = q.get()
            if err is not None:
                raise err
            if x is end:
                return
            yield x
    finally:
        stop.set()


def train_batches(
    data: TrainingData,
    global_batch: int,
    rank: int,
    world_size: int,
    epoch: int,
    seed: int,
    top1: bool,
    max_steps: int = 0,
    start_step: int = 0,
    extra_negatives: int = 0,
    positive_sets: bool = False,
    lanes: int = LANES,
) -> Iterator[Batch]:
    """This rank's part of the epoch's global batches (last partial batch dropped).

    The epoch's stream is the training blocks (Parquet row groups) in a (seed, epoch)
    permutation, each block's rows permuted by (seed, epoch, block). It is cut into
    `lanes` equal lanes; global batch s takes rows [s*b, (s+1)*b) of every lane (b =
    global_batch / lanes), in lane order. Rank r owns a contiguous run of lanes and
    reads only their blocks, so its local batch is rows [r*B/W, (r+1)*B/W) of the
    global batch for any world size W, and a resumed or re-sharded run sees the same
    data. `start_step` skips the epoch's first steps without reading them.
    """
    parts = data.parts["train"]
    per_lane = lane_layout(global_batch, world_size, lanes)
    steps = epoch_steps(parts.n, global_batch, max_steps)
    lane_len = parts.n // lanes
    order = np.random.default_rng([seed, epoch]).permutation(len(parts.blocks))
    mine = range(rank * lanes // world_size, (rank + 1) * lanes // world_size)

    def batches() -> Iterator[Batch]:
        lanes = [
            rechunk(read_range(parts, order, lane * lane_len + start_step * per_lane,
                               lane * lane_len + steps * per_lane, (seed, epoch)), per_lane)
            for lane in mine
        ]  # fmt: skip
        for step in range(start_step, steps):
            split = data.arrays(pa.concat_tables([next(lane) for lane in lanes]), "train")
            rng = LaneRng(seed, epoch, step, mine, per_lane)
            rows = np.arange(split.n)
            yield make_batch(data, split, rows, np.ones(split.n, bool), rng, top1, extra_negatives, positive_sets)

    return prefetched(batches(), nice=READER_NICE)


def slice_batch(full: Batch, keys: list[str], offset: int, size: int) -> Batch:
    """Rows [offset, offset + size) of a batch."""
    sl = slice(offset, offset + size)
    return Batch(
        dense=full.dense[sl], sparse=_slice_kjt(full.sparse, keys, sl),
        vectors={k: v if k.endswith("/neg") else v[sl] for k, v in full.vectors.items()}, content=full.content[sl],
        labels=full.labels[sl], weights=full.weights[sl], ratings=full.ratings[sl], item_ids=full.item_ids[sl],
        user_ids=full.user_ids[sl], ii=full.ii.rows(sl), uu=full.uu.rows(sl),
    )  # fmt: skip


def _slice_kjt(kjt: KeyedJaggedTensor, keys: list[str], sl: slice) -> KeyedJaggedTensor:
    lengths, values = [], []
    for k in keys:
        jt = kjt[k]
        ln = jt.lengths()
        offs = jt.offsets()
        lengths.append(ln[sl])
        values.append(jt.values()[offs[sl.start] : offs[sl.stop]])
    return KeyedJaggedTensor.from_lengths_sync(
        keys=list(keys), values=torch.cat(values), lengths=torch.cat(lengths).to(torch.int32)
    )


def eval_batches(
    data: TrainingData, split_name: str, global_batch: int, rank: int, world_size: int
) -> Iterator[tuple[Batch, np.ndarray]]:
    """This rank's share of a split in equal-size padded batches, with the row ids it scores.

    Rank r scores the contiguous rows [r*P, (r+1)*P) (P = ceil(n / W)), reading only
    their blocks. Row ids are -1 for padding (weight 0), so gathered predictions map
    back to split rows exactly.
    """
    parts = data.parts[split_name]
    n = parts.n
    local = max(1, global_batch // world_size)
    per_rank = -(-n // world_size)
    steps = -(-per_rank // local) if n else 0
    lo, hi = min(n, rank * per_rank), min(n, (rank + 1) * per_rank)

    def batches() -> Iterator[tuple[Batch, np.ndarray]]:
        chunks = rechunk(read_range(parts, np.arange(len(parts.blocks)), lo, hi, None), local)
        start = lo
        for _ in range(steps):
            table = next(chunks, None)
            if table is None:  # this rank's rows ran out: pad with the split's first row
                table = parts.read_block(0).slice(0, 0) if n == 0 else next(read_range(parts, np.arange(1), 0, 1, None))
                k = 0
            else:
                k = table.num_rows
            rows = np.concatenate([np.arange(k), np.zeros(local - k, np.int64)])
            valid = np.arange(local) < k
            ids = np.where(valid, start + np.arange(local), -1)
            start += k
            # no InfoNCE inputs: the scores need only the logits
            yield make_batch(data, data.arrays(table, split_name), rows, valid, None, True), ids

    return prefetched(batches())
