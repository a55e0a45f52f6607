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

Features whose value for a test row is not a function of one entity alone (history bags,
rating statistics, per-row review vectors) are refused by name.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from launch.config import DataError

# the owner of every feature the features stage writes (features/schema.py, dense.py)
OWNER = {
    "user_id": "user", "occupation": "user", "gender": "user", "age_bucket": "user",
    "zip_prefix": "user", "age": "user",
    "item_id": "item", "categories": "item", "year": "item", "price": "item", "has_price": "item",
}  # fmt: skip
READ_BATCH_ROWS = 65536
SPLIT_ORDER = ("test", "val", "train")


def owner_of(name: str, where: str) -> str:
    if name not in OWNER:
        raise DataError(
            f"{where}: feature {name!r} is not a function of the user or the item alone "
            "(history bags, rating statistics); `dlrrec export` serves only per-entity features"
        )
    return OWNER[name]


@dataclass
class EntityArrays:
    """One kind's inputs as NumPy, rows 0..n (row n: the unknown entity).

    `bags` holds each owned sparse feature as (offsets [n + 2], values); `dense` is
    [n + 1, Dk]; `seen` [n] marks the entities in training rows.
    """

    sparse_names: list[str]
    bags: list[tuple[np.ndarray, np.ndarray]]
    dense_names: list[str]
    dense: np.ndarray
    seen: np.ndarray


def _batches(folder: Path, columns: list[str]) -> Iterator[pa.RecordBatch]:
    files = sorted(folder.glob("part-*.parquet"))
    if not files:
        raise DataError(f"{folder}: no part-*.parquet files; run `dlrrec features build` first")
    for f in files:
        pf = pq.ParquetFile(f)
        missing = [c for c in columns if c not in pf.schema_arrow.names]
        if missing:
            raise DataError(f"{f}: missing column {missing[0]!r}")
        yield from pf.iter_batches(batch_size=READ_BATCH_ROWS, columns=columns)


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
    meta: dict[str, Any],
    sparse_names: list[str],
    dense_names: list[str],
    cold: bool,
) -> dict[str, EntityArrays]:
    """Both kinds' inputs from the examples (one streaming pass per split)."""
    where = str(features / "_meta.json")
    spec = meta["sparse_features"]
    sizes = {"user": int(meta["n_users"]), "item": int(meta["n_items"])}
    owned = {e: [s for s in sparse_names if owner_of(s, where) == e] for e in sizes}
    dense_owned = {e: [d for d in dense_names if owner_of(d, where) == e] for e in sizes}
    cols: dict[str, _Collector] = {}
    for e, n in sizes.items():
        attrs = [s for s in owned[e] if s != f"{e}_id"]
        single = [s for s in attrs if not spec[s].get("multi_valued")]
        multi = [s for s in attrs if spec[s].get("multi_valued")]
        cols[e] = _Collector(n, single, multi, dense_owned[e])
    for split in SPLIT_ORDER:
        columns = sorted({"user_id", "item_id", *sparse_names, *dense_names})
        for batch in _batches(features / "examples" / split, columns):
            for e, c in cols.items():
                ids = batch.column(f"{e}_id").to_numpy(zero_copy_only=False).astype(np.int64)
                if ids.size and (ids.min() < 0 or ids.max() >= sizes[e]):
                    raise DataError(
                        f"{features / 'examples' / split}: {e}_id outside [0, {sizes[e]}) (n_{e}s)"
                    )
                c.add(ids, batch, split == "train")
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
            else:
                bags.append(c.bags(s, 0))
        dense = np.concatenate([c.dense, np.zeros((1, len(c.dense_names)), np.float32)])
        out[e] = EntityArrays(owned[e], bags, c.dense_names, dense, c.seen)
    return out


def entity_vectors(features: Path, entity: str, col: str, n: int, dim: int) -> np.ndarray:
    """float16 [n + 1, C] of `features/entities/{entity}s.parquet` column `col` (row n: zeros)."""
    from trainer.content_tables import ParquetColumn

    column = ParquetColumn.scan(features / "entities" / f"{entity}s.parquet", entity, col, n, dim)
    return np.concatenate([column.read_rows(0, n), np.zeros((1, dim), np.float16)])


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
