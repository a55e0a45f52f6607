"""The feature recipe of a serving pair: one row of model inputs per user and per item.

Shape legend: n = entities of one kind, K = sparse features an entity owns.

A val/test row of a random split reads training rows only, and each of its inputs
belongs to its user (occupation, gender, age bucket, zip prefix, age, the profile) or
to its item (categories, year, price, the item vector); none depends on the pair. So a
serving pair (u, i) gets exactly a test row's inputs from two per-entity tables:

- vocab-encoded attributes and standardized dense values: each entity's values in the
  examples (the same in every row of that entity: vocab and dense statistics come from
  training rows, features/examples.py), scanned in bounded record batches, test rows
  first; an entity in no row gets the OOV id 0 and the training mean (0 after
  standardization);
- the tower inputs: `features/entities/*.parquet` (the user's full training profile,
  the item's vector), never the examples' per-row vector columns;
- the ids: with cold-start rows (`train.id_dropout`), ids absent from the training rows
  map to the cold row, as the trainer's evaluation does (trainer/cold_start.py).

Each table gets one more row, n: the unknown entity (OOV attributes, the cold row when
there is one, zero dense values and vectors): the cold-start path for source ids the
features stage never saw.

- history bags and rating statistics (features/history.py, stats.py): a test row reads
  all of its owner's training rows (random split), or every interaction strictly before
  it (temporal), so each entity's value is that of one more row per entity, outside
  training and after the last timestamp, computed by the features stage's own functions
  (`derived_values`; this reads the examples' id, label, rating and timestamp columns
  whole, as the features stage does).
- history bags read as content (`train.history_content`): the same per-entity bags
  (computed even when the bags are no sparse feature, `train.history_tables: none`),
  whose mean member vectors `bag_means` computes in bounded chunks of owners
  (`row_chunks`) with the trainer's `trainer.data.pooled_bag`.

Other features (per-row review vectors) are refused by name.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dlrrec.arrow import parquet_batches
from dlrrec.config import DataError
from dlrrec.meta import FeaturesMeta, read_features_meta
from features.history import HISTORY_FEATURES, history_bags
from features.stats import (
    BIAS_FEATURE,
    RECENT_FEATURES,
    STAT_FEATURES,
    ItemBlockSums,
    rating_stats,
    user_bias,
)
from trainer.data import SplitArrays, pooled_bag
from trainer.vector_store import VectorStore, open_store

# the owner of every feature the features stage writes (features/schema.py, dense.py)
OWNER = {
    "user_id": "user", "occupation": "user", "gender": "user", "age_bucket": "user",
    "zip_prefix": "user", "age": "user",
    "item_id": "item", "categories": "item", "year": "item", "price": "item", "has_price": "item",
}  # fmt: skip
# test-row values computed from the interactions, not read from the examples
DERIVED = {name: spec[0] for name, spec in HISTORY_FEATURES.items()}
DERIVED.update({name: name.split("_")[0] for name in (*STAT_FEATURES, *RECENT_FEATURES, BIAS_FEATURE)})
OWNER.update(DERIVED)
READ_BATCH_ROWS = 65536
# the members one chunk of `bag_means` reads: its float32 vectors stay under
# 2^18 * C * 4 bytes (384 MiB at C = 384), however many entities there are
MEAN_CHUNK_MEMBERS = 1 << 18
SPLIT_ORDER = ("test", "val", "train")


def owner_of(name: str, where: str) -> str:
    if name not in OWNER:
        raise DataError(
            f"{where}: feature {name!r} is not a function of the user or the item alone; "
            "`dlrrec export` serves only per-entity features"
        )
    return OWNER[name]


@dataclass
class EntityArrays:
    """One kind's inputs as NumPy, rows 0..n (row n: the unknown entity).

    `bags` holds each owned sparse feature as (offsets [n + 2], values); `dense` is
    [n + 1, Dk]; `seen` [n] marks the entities in training rows; `history` holds each
    owned history bag read as content (`train.history_content`) as (offsets [n + 2],
    member ids), row n empty.
    """

    sparse_names: list[str]
    bags: list[tuple[np.ndarray, np.ndarray]]
    dense_names: list[str]
    dense: np.ndarray
    seen: np.ndarray
    history: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


def _batches(folder: Path, columns: list[str]) -> Iterator[pa.RecordBatch]:
    files = sorted(folder.glob("part-*.parquet"))
    if not files:
        raise DataError(f"{folder}: no part-*.parquet files; run `dlrrec features build` first")
    for f in files:
        names = pq.read_schema(f).names
        missing = [c for c in columns if c not in names]
        if missing:
            raise DataError(f"{f}: missing column {missing[0]!r}")
        yield from parquet_batches(f, columns, READ_BATCH_ROWS)


class _Collector:
    """First value per entity of each feature, over record batches (memory O(entities))."""

    def __init__(self, n: int, single: list[str], multi: list[str], dense: list[str]) -> None:
        self.n = n
        self.single = {c: np.zeros(n, np.int64) for c in single}
        self.multi: dict[str, list[tuple[np.ndarray, pa.Array]]] = {c: [] for c in multi}
        self.dense = np.zeros((n, len(dense)), np.float32)
        self.dense_names = dense
        self.done = np.zeros(n, bool)
        self.seen = np.zeros(n, bool)

    def add(self, ids: np.ndarray, batch: pa.RecordBatch, train: bool) -> None:
        if train:
            self.seen[ids] = True
        uniq, first = np.unique(ids, return_index=True)
        new = ~self.done[uniq]
        ent, rows = uniq[new], first[new]
        if not ent.size:
            return
        self.done[ent] = True
        for c, arr in self.single.items():
            arr[ent] = batch.column(c).to_numpy(zero_copy_only=False)[rows]
        for c, parts in self.multi.items():
            parts.append((ent, batch.column(c).take(pa.array(rows))))
        for k, c in enumerate(self.dense_names):
            self.dense[ent, k] = batch.column(c).to_numpy(zero_copy_only=False)[rows]

    def bags(self, name: str, unknown: int) -> tuple[np.ndarray, np.ndarray]:
        """CSR over rows 0..n of feature `name` (row n: the unknown entity)."""
        if name in self.single:
            values = np.append(self.single[name], unknown)
            return np.arange(self.n + 2, dtype=np.int64), values
        lengths = np.zeros(self.n + 1, np.int64)
        owners, lists = [], []
        for ent, arr in self.multi[name]:
            lengths[ent] = np.asarray(arr.value_lengths().fill_null(0))
            owners.append(ent)
            lists.append(arr)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        values = np.zeros(int(offsets[-1]), np.int64)
        for ent, arr in zip(owners, lists):
            flat = arr.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
            ln = lengths[ent]
            starts = np.repeat(offsets[ent] - (np.cumsum(ln) - ln), ln)
            values[starts + np.arange(flat.size)] = flat
        return offsets, values


def entity_arrays(
    features: Path,
    meta: FeaturesMeta,
    sparse_names: list[str],
    dense_names: list[str],
    cold: bool,
    content_bags: list[str] | None = None,
) -> dict[str, EntityArrays]:
    """Both kinds' inputs: attributes from the examples (one streaming pass per split),
    history bags and rating statistics from `derived_values`; `content_bags` (history
    bags read as content, sparse features or not) land in each owner's `history`."""
    where = str(features / "_meta.json")
    spec = meta["sparse_features"]
    sizes = {"user": int(meta["n_users"]), "item": int(meta["n_items"])}
    owned = {e: [s for s in sparse_names if owner_of(s, where) == e] for e in sizes}
    dense_owned = {e: [d for d in dense_names if owner_of(d, where) == e] for e in sizes}
    cols: dict[str, _Collector] = {}
    for e, n in sizes.items():
        attrs = [s for s in owned[e] if s != f"{e}_id" and s not in DERIVED]
        single = [s for s in attrs if not spec[s].get("multi_valued")]
        multi = [s for s in attrs if spec[s].get("multi_valued")]
        cols[e] = _Collector(n, single, multi, [d for d in dense_owned[e] if d not in DERIVED])
    columns = sorted({"user_id", "item_id", *sparse_names, *dense_names} - set(DERIVED))
    for split in SPLIT_ORDER:
        for batch in _batches(features / "examples" / split, columns):
            for e, c in cols.items():
                ids = batch.column(f"{e}_id").to_numpy(zero_copy_only=False).astype(np.int64)
                if ids.size and (ids.min() < 0 or ids.max() >= sizes[e]):
                    raise DataError(
                        f"{features / 'examples' / split}: {e}_id outside [0, {sizes[e]}) (n_{e}s)"
                    )
                c.add(ids, batch, split == "train")
    content_bags = content_bags or []
    wanted = [x for x in sparse_names + dense_names if x in DERIVED]
    derived = derived_values(features, meta, list(dict.fromkeys(wanted + content_bags)))
    out = {}
    for e, c in cols.items():
        n = sizes[e]
        bags = []
        for s in owned[e]:
            if s == f"{e}_id":
                # ids unseen in training rows, and the unknown entity, take the cold row (id n)
                ids = np.arange(n + 1, dtype=np.int64)
                if cold:
                    ids[np.flatnonzero(~c.seen)] = n
                bags.append((np.arange(n + 2, dtype=np.int64), ids))
            elif s in DERIVED:
                bags.append(_with_unknown(*derived[s]))
            else:
                bags.append(c.bags(s, 0))
        dense = np.zeros((n + 1, len(dense_owned[e])), np.float32)
        for k, d in enumerate(dense_owned[e]):
            dense[:n, k] = derived[d][0] if d in DERIVED else c.dense[:, c.dense_names.index(d)]
        history = {b: _with_unknown(*derived[b]) for b in content_bags if owner_of(b, where) == e}
        out[e] = EntityArrays(owned[e], bags, dense_owned[e], dense, c.seen, history)
    return out


def _with_unknown(offsets: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A derived bag's CSR over rows 0..n: the unknown entity (row n) gets an empty bag."""
    return np.append(offsets, offsets[-1]), values


def row_chunks(offsets: np.ndarray, max_rows: int, max_members: int) -> Iterator[tuple[int, int]]:
    """[lo, hi) ranges covering the rows of a CSR array, each of at most `max_rows` rows
    and `max_members` values (a longer single row is a chunk of its own)."""
    n, lo = offsets.size - 1, 0
    while lo < n:
        fit = int(np.searchsorted(offsets, offsets[lo] + max_members, side="right")) - 1
        hi = min(max(fit, lo + 1), lo + max_rows, n)
        yield lo, hi
        lo = hi


def bag_means(
    offsets: np.ndarray, values: np.ndarray, lo: int, hi: int, store: VectorStore
) -> np.ndarray:
    """float16 [hi - lo, C]: the mean member vector of bags lo..hi-1 (0 for an empty bag),
    by the trainer's own `pooled_bag`, so each owner's tower input is bit for bit what a
    row with that bag gets in training; memory is O(the chunk's members), never [members, C]."""
    none = np.zeros(0, np.int64)
    bags = SplitArrays(
        offsets.size - 1, none, none, none, np.zeros((0, 0), np.float32), {}, {"bag": (offsets, values)}, {}
    )
    return pooled_bag(store, bags, "bag", np.arange(lo, hi))


def derived_values(
    features: Path, meta: FeaturesMeta, names: list[str]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Test-row values of history bags ((offsets [n + 1], member ids)) and rating
    statistics ((values [n], unused)) per owner entity, by the features stage's functions
    over the interactions plus one pseudo row per entity (not training, after the last
    timestamp, so it reads what a test row reads: see the module docstring)."""
    if not names:
        return {}
    temporal = meta.get("split") == "temporal"
    cols = ["user_id", "item_id", "label", "rating", "timestamp"]
    splits = SPLIT_ORDER if temporal else ("train",)
    parts = [(b, s == "train") for s in splits for b in _batches(features / "examples" / s, cols)]
    t = pa.Table.from_batches([b for b, _ in parts]).combine_chunks()
    col = {c: t.column(c).to_numpy() for c in cols}
    nu, ni = int(meta["n_users"]), int(meta["n_items"])
    n = t.num_rows
    users = np.concatenate([col["user_id"], np.arange(nu), np.zeros(ni, np.int64)]).astype(np.int64)
    items = np.concatenate([col["item_id"], np.zeros(nu, np.int64), np.arange(ni)]).astype(np.int64)
    pad = np.zeros(nu + ni, bool)
    label = np.concatenate([col["label"] > 0.5, pad])
    rating = np.concatenate([col["rating"], pad.astype(np.float32)])
    last = int(col["timestamp"].max(initial=0)) + 1
    ts = np.concatenate([col["timestamp"], np.full(nu + ni, last)])
    train = np.concatenate([*[np.full(b.num_rows, tr) for b, tr in parts], pad])
    # temporal_history: frozen -> the temporal sets hold training rows only (features/main.py)
    readable = train if meta.get("temporal_history") == "frozen" else None
    folds = np.zeros(n + nu + ni, np.int64)  # a pseudo row reads every fold
    cfg = meta.get("config", {})
    values: dict[str, Any] = {}
    if any(x in HISTORY_FEATURES for x in names):
        max_len = int(cfg.get("history_max_len", 100))
        values.update(
            history_bags(users, items, label, ts, train, temporal, folds, 2, max_len, readable)
        )
    if any(x in STAT_FEATURES + RECENT_FEATURES for x in names):
        threshold = float(cfg.get("positive_min_rating", 4.0))
        recent = int(cfg.get("rating_recent", 0))
        values.update(
            rating_stats(
                users, items, rating, label, ts, train, temporal, folds, 2, threshold, readable,
                recent,
            )
        )
    if BIAS_FEATURE in names:
        values[BIAS_FEATURE] = _user_bias(meta, users, items, rating, ts, readable)
    rows = {"user": slice(n, n + nu), "item": slice(n + nu, n + nu + ni)}
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for x in names:
        sl = rows[DERIVED[x]]
        if x in HISTORY_FEATURES:
            bags = values[x][sl]
            offsets = np.asarray(bags.offsets).astype(np.int64)
            out[x] = (offsets - offsets[0], bags.flatten().to_numpy().astype(np.int64))
        else:
            out[x] = (np.asarray(values[x][sl], np.float32), np.zeros(0, np.int64))
    return out


def _user_bias(
    meta: FeaturesMeta, users: np.ndarray, items: np.ndarray, rating: np.ndarray, ts: np.ndarray,
    readable: np.ndarray | None,
) -> np.ndarray:  # fmt: skip
    """`user_hist_bias` of every row (pseudo rows included), as features/owners.py computes it."""
    keep = np.ones(len(ts), bool) if readable is None else readable
    sums = ItemBlockSums(int(meta["n_items"]), np.asarray(meta["block_cuts"], np.int64))
    sums.add(items[keep], ts[keep], rating[keep])
    return user_bias(users, items, rating, ts, keep, sums.earlier_means(), sums.block(ts))


def entity_vectors(features: Path, entity: str, col: str, n: int, dim: int) -> np.ndarray:
    """float16 [n + 1, C] of `features/entities/{entity}s.parquet` column `col` (row n:
    zeros), through the features artifact's vector store (trainer/vector_store.py)."""
    source = features / "entities" / f"{entity}s.parquet"
    store = open_store(features, read_features_meta(features)["fingerprint"], col, source, f"{entity}_id", col, n, dim)
    return np.concatenate([store.read(np.arange(n)), np.zeros((1, dim), np.float16)])


def id_map(features: Path, entity: str) -> pa.Table:
    """(source id string, row) of `features/entities/{entity}s.parquet`, sorted by row."""
    path = features / "entities" / f"{entity}s.parquet"
    t = pq.read_table(path, columns=[f"{entity}_id", entity])
    return pa.table(
        {
            entity: t.column(entity).cast(pa.string()),
            "row": t.column(f"{entity}_id").cast(pa.int64()),
        }
    ).sort_by("row")
