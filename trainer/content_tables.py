"""Frozen pretrained entity vectors (MiniLM, 384-d) as row-wise sharded TorchRec tables.

Shape legend: B = local batch size, M = extra negatives, C = content dim (384),
n = entities of one kind (users or items).

The towers and the InfoNCE losses need entity vectors: the item vector of each row
(unless the features stage wrote it per row, `row_content`), the anchor, the sampled
SWING positive and the extra negatives. They live in one frozen FP16 table per entity
content column (`features/entities/{users,items}.parquet`) inside an EmbeddingCollection
that `DistributedModelParallel` shards row-wise with the id tables, so each rank holds
about n / N rows and `TrainPipelineSparseDist` pipelines their input dist too. The batch
carries ids only, as one KJT with three features per table:

    `{col}/row` [B]  the row's own entity (the item tower's input; the user-user anchor)
    `{col}/pos` [B]  the sampled SWING positive (0 where the anchor has none: masked)
    `{col}/neg` [M]  the extra negatives, all in the first bag (shared by the batch)

A feature that the run does not need has length 0. Lookups run under `no_grad`, so no
gradient and no fused-optimizer update ever reaches the tables; they are left out of
checkpoints (`drop_frozen`) and refilled from the features artifact, whose fingerprint
pins the run. Each rank fills only its own shard's rows, reading those rows' Parquet
row groups in batches (`ParquetColumn.read_rows`), never the whole column.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.modules.embedding_configs import DataType, EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from dlrrec.config import DataError

KINDS = ("row", "pos", "neg")
# the DLRRECTrain attribute holding the tables: its state-dict keys are never checkpointed
MODULE_NAME = "content_tables"
READ_BATCH_ROWS = 8192


def feature_key(col: str, kind: str) -> str:
    return f"{col}/{kind}"


def table_name(col: str) -> str:
    return f"content_{col}"


def fixed_list_to_numpy(col: pa.ChunkedArray | pa.Array, where: str) -> np.ndarray:
    """[rows, width] float16 of a fixed-size-list column; NaN/inf and other types are errors."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if not pa.types.is_fixed_size_list(arr.type):
        raise DataError(f"{where}: expected a fixed-size list of floats, got {arr.type}")
    width = arr.type.list_size
    flat = arr.flatten().to_numpy(zero_copy_only=False)
    out = flat.reshape(len(arr), width).astype(np.float16, copy=False)
    if not np.isfinite(out).all():
        raise DataError(f"{where}: NaN or inf in content vectors")
    return out


def _batches(pf: pq.ParquetFile, groups: list[int], columns: list[str]) -> Iterator[pa.RecordBatch]:
    """Record batches of `groups`, one row group at a time (one `iter_batches` call over
    many row groups may buffer them all at once)."""
    for g in groups:
        yield from pf.iter_batches(batch_size=READ_BATCH_ROWS, row_groups=[g], columns=columns)


def parquet_files(path: Path) -> list[Path]:
    """A Parquet file, or the part files of a folder (the profile table is written in parts)."""
    return sorted(path.glob("part-*.parquet")) if path.is_dir() else [path]


@dataclass
class ParquetColumn:
    """One entity content column of `features/entities/*.parquet`, read by row ranges.

    `has_content` [n] (entities with a nonzero vector: the extra-negative catalogue) is
    computed by one streaming scan, which also checks ids and values; vectors are only
    ever read for a row range.
    """

    path: Path
    id_col: str
    col: str
    n: int
    dim: int
    has_content: np.ndarray

    @classmethod
    def scan(
        cls, path: Path, entity: str, col: str, n: int, dim: int, id_col: str = ""
    ) -> ParquetColumn:
        """`id_col` defaults to `{entity}_id`; `n` is the table's rows (ids in [0, n))."""
        if not (path.is_file() or path.is_dir()):
            raise DataError(f"{path}: missing; run `dlrrec features build` first")
        id_col = id_col or f"{entity}_id"
        has = np.zeros(n, bool)
        for file in parquet_files(path):
            pf = pq.ParquetFile(file)
            for c in (id_col, col):
                if c not in pf.schema_arrow.names:
                    raise DataError(f"{file}: missing column {c!r}")
            for rb in _batches(pf, list(range(pf.num_row_groups)), [id_col, col]):
                ids = rb.column(0).to_numpy(zero_copy_only=False).astype(np.int64)
                vec = fixed_list_to_numpy(rb.column(1), f"{file}:{col}")
                if vec.shape[1] != dim:
                    raise DataError(
                        f"{file}:{col}: vectors of width {vec.shape[1]}, _meta.json content_dim is {dim}"
                    )
                if ids.size and (ids.min() < 0 or ids.max() >= n):
                    raise DataError(f"{file}:{id_col}: ids outside [0, {n}) (from _meta.json)")
                has[ids] = np.abs(vec).max(axis=1) > 0
        return cls(path, id_col, col, n, dim, has)

    def read_rows(self, lo: int, hi: int, out: np.ndarray | None = None) -> np.ndarray:
        """Vectors of entities [lo, hi) as float16 [hi - lo, C] (zeros where absent).

        Only row groups whose id statistics overlap [lo, hi) are read, in batches;
        `out` (float16 [hi - lo, C]) is filled in place when given (no second copy).
        """
        if out is None:
            out = np.zeros((max(hi - lo, 0), self.dim), np.float16)
        else:
            out[:] = 0
        if hi <= lo:
            return out
        for file in parquet_files(self.path):
            pf = pq.ParquetFile(file)
            k = pf.schema_arrow.names.index(self.id_col)
            groups = []
            for g in range(pf.num_row_groups):
                stats = pf.metadata.row_group(g).column(k).statistics
                if stats is None or not stats.has_min_max or (stats.max >= lo and stats.min < hi):
                    groups.append(g)
            for rb in _batches(pf, groups, [self.id_col, self.col]):
                ids = rb.column(0).to_numpy(zero_copy_only=False).astype(np.int64)
                keep = (ids >= lo) & (ids < hi)
                if keep.any():
                    vec = fixed_list_to_numpy(
                        rb.column(1).filter(pa.array(keep)), f"{file}:{self.col}"
                    )
                    out[ids[keep] - lo] = vec
        return out


@dataclass
class ArrayColumn:
    """An in-memory entity column ([n, C] float16), for benchmarks and tests."""

    values: np.ndarray

    @property
    def n(self) -> int:
        return int(self.values.shape[0])

    @property
    def has_content(self) -> np.ndarray:
        return np.abs(self.values).max(axis=1) > 0

    def read_rows(self, lo: int, hi: int, out: np.ndarray | None = None) -> np.ndarray:
        if out is None:
            return self.values[lo:hi].astype(np.float16)
        out[:] = self.values[lo:hi]
        return out


EntityColumn = ParquetColumn | ArrayColumn


class ContentTables(nn.Module):
    """Frozen FP16 entity-vector tables; lookups return float32 vectors without gradient.

    Args:
        sizes: content column -> number of entities (rows of its table).
        dim: C.
        device: `meta` before sharding (DistributedModelParallel materialises the shards).

    Example::

        tables = ContentTables({"item_text": 1682}, 384, torch.device("meta"))
        vec = tables(batch.entity)  # {"item_text/row": [B, C], "item_text/pos": [B, C], "item_text/neg": [M, C]}
    """

    def __init__(self, sizes: dict[str, int], dim: int, device: torch.device | None = None) -> None:
        super().__init__()
        self.keys = [feature_key(c, k) for c in sizes for k in KINDS]
        self.collection = EmbeddingCollection(
            tables=[
                EmbeddingConfig(
                    name=table_name(col),
                    embedding_dim=dim,
                    num_embeddings=max(n, 1),
                    feature_names=[feature_key(col, k) for k in KINDS],
                    data_type=DataType.FP16,
                )
                for col, n in sizes.items()
            ],
            device=device,
        )

    def forward(self, ids: KeyedJaggedTensor) -> dict[str, torch.Tensor]:
        """ids: the batch's entity KJT. Returns: {feature: [ids of that feature, C] float32}."""
        # no_grad, and the (lazy) sharded output is consumed inside it: no autograd graph
        # reaches the fused TBE, so its backward and in-place optimizer never run.
        with torch.no_grad():
            out = self.collection(ids)
            return {k: out[k].values().float() for k in self.keys}


def table_constraints(columns: list[str]) -> dict[str, ParameterConstraints]:
    """Planner constraints: row-wise (each rank ~1/N of the rows), fused FP16 kernel."""
    return {
        table_name(c): ParameterConstraints(sharding_types=["row_wise"], compute_kernels=["fused"])
        for c in columns
    }


def _content_weights(module: nn.Module) -> dict[str, Any]:
    """The content tables' weights in `module`'s state dict (keys `...content_<col>.weight`)."""
    return {
        k: v
        for k, v in module.state_dict().items()
        if k.endswith(".weight") and k.split(".")[-2].startswith("content_")
    }


def local_shards(module: nn.Module) -> dict[str, list[tuple[int, torch.Tensor]]]:
    """{column: [(first row, this rank's weight rows)]} of every content table, sharded or not."""
    out: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for key, value in _content_weights(module).items():
        col = key.split(".")[-2].removeprefix("content_")
        if hasattr(value, "local_shards"):
            out[col] = [(int(s.metadata.shard_offsets[0]), s.tensor) for s in value.local_shards()]
        else:
            out[col] = [(0, value)]
    return out


def fill_content_tables(module: nn.Module, columns: dict[str, EntityColumn]) -> int:
    """Copy each local shard's rows from its entity column. Returns the bytes filled."""
    total = 0
    with torch.no_grad():
        for col, shards in local_shards(module).items():
            for first, weight in shards:
                if weight.numel() and weight.device.type == "cpu" and weight.is_contiguous():
                    # straight into the shard: no second host copy of its rows
                    columns[col].read_rows(
                        first, first + weight.shape[0], out=weight.detach().numpy()
                    )
                elif weight.numel():
                    weight.copy_(
                        torch.from_numpy(columns[col].read_rows(first, first + weight.shape[0]))
                    )
                total += weight.numel() * weight.element_size()
    return total


def drop_frozen(state_dict: dict[str, Any]) -> dict[str, Any]:
    """The state dict without the frozen content tables (reloaded from features, not saved)."""
    return {k: v for k, v in state_dict.items() if f"{MODULE_NAME}." not in k}


def entity_kjt(
    columns: list[str], ids: dict[str, np.ndarray], batch_size: int
) -> KeyedJaggedTensor:
    """The batch's entity lookups: features `{col}/{row,pos,neg}` of every table column.

    Args:
        ids: feature -> its ids ([B] for row/pos, [M] for neg); absent = not needed (length 0).
    """
    keys, lengths, values = [], [], []
    for col in columns:
        for kind in KINDS:
            key = feature_key(col, kind)
            v = ids.get(key, np.zeros(0, np.int64))
            ln = np.zeros(batch_size, np.int64)
            if kind == "neg":
                if batch_size:
                    ln[0] = v.size
            elif v.size:
                ln[:] = 1
            keys.append(key)
            lengths.append(ln)
            values.append(v.astype(np.int64))
    return KeyedJaggedTensor.from_lengths_sync(
        keys=keys,
        values=torch.from_numpy(np.concatenate(values) if values else np.zeros(0, np.int64)),
        lengths=torch.from_numpy(
            np.concatenate(lengths).astype(np.int32) if lengths else np.zeros(0, np.int32)
        ),
    )


def slice_entity_kjt(kjt: KeyedJaggedTensor, sl: slice) -> KeyedJaggedTensor:
    """Rows `sl` of an entity KJT; `*/neg` features keep all their ids (in the first bag)."""
    size = sl.stop - sl.start
    lengths, values = [], []
    for k in kjt.keys():
        jt = kjt[k]
        v = jt.values()
        if k.endswith("/neg"):
            ln = torch.zeros(size, dtype=torch.int32)
            if size:
                ln[0] = v.numel()
            lengths.append(ln)
            values.append(v)
        else:
            offs = jt.offsets()
            lengths.append(jt.lengths()[sl].to(torch.int32))
            values.append(v[offs[sl.start] : offs[sl.stop]])
    return KeyedJaggedTensor.from_lengths_sync(
        keys=list(kjt.keys()),
        values=torch.cat(values) if values else torch.zeros(0, dtype=torch.int64),
        lengths=torch.cat(lengths) if lengths else torch.zeros(0, dtype=torch.int32),
    )
