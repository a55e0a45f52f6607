"""Disk-backed partitions of the row stream, so no step of the build holds all rows.

The streaming build (features/main.py) reads the rows in chunks, in input order.  Steps
that need all rows of one owner together (a user's profile, a user's or an item's
out-of-fold statistics and bags, repeated pairs) cannot work chunk by chunk, so a pass
appends every chunk's rows to one `Spill` bucket per owner range, and a bucket job then
reads one bucket at a time: every row of a set of owners, in input order (a chunk is
split stably, and chunks arrive in order).  Per-row results of a bucket job go back to
the input order through `SeqJoin`, a streaming merge on the row's sequence number.

Buckets are contiguous owner ranges cut at near-equal row counts (`owner_ranges`), so
per-owner tables come out of the bucket jobs already in owner order.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dlrrec.arrow import parquet_batches

SEQ = "seq"  # the row's 0-based position in the input stream (after bad rows are dropped)
RESULT_GROUP_ROWS = 1 << 14  # row groups of bucket results: what `SeqJoin` holds per bucket


def owner_ranges(rows_per_owner: np.ndarray, bucket_rows: int) -> np.ndarray:
    """int64 edges [B + 1] of contiguous owner ranges holding about `bucket_rows` rows each.

    An owner is never split, so one owner with more rows than `bucket_rows` is a bucket
    of its own.  Always at least one bucket, even with no owners.
    """
    n = len(rows_per_owner)
    cum = np.cumsum(rows_per_owner, dtype=np.int64)
    total = int(cum[-1]) if n else 0
    k = max(1, -(-total // max(bucket_rows, 1)))
    cuts = np.searchsorted(cum, np.arange(1, k, dtype=np.int64) * (total / k), side="left") + 1
    edges = np.unique(np.concatenate([[0], np.minimum(cuts, n), [n]]))
    return edges.astype(np.int64)


def bucket_of(owner: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """int64 [N] bucket of each owner index: edges[b] <= owner < edges[b + 1]."""
    return np.searchsorted(edges, owner, side="right").astype(np.int64) - 1


class Spill:
    """Rows appended to one Arrow IPC stream file per bucket under `folder`.

    Not Parquet: a Parquet writer keeps each row group's metadata (about 2 KB) until it
    closes, and every `add` writes a row group to each bucket it touches, so with chunks x
    buckets growing with the rows, the open writers grew with the rows too. An IPC
    stream keeps nothing per batch; its buffers are LZ4-compressed, as the spill is
    temporary disk.
    """

    _OPTIONS = pa.ipc.IpcWriteOptions(compression="lz4")

    def __init__(self, folder: Path, n_buckets: int) -> None:
        self.folder = folder
        self.n_buckets = n_buckets
        folder.mkdir(parents=True, exist_ok=True)
        self._writers: dict[int, pa.ipc.RecordBatchStreamWriter] = {}

    def path(self, bucket: int) -> Path:
        return self.folder / f"bucket-{bucket:05d}.arrows"

    def add(self, table: pa.Table, bucket: np.ndarray) -> None:
        """Append each row of `table` to its bucket, keeping the rows' order."""
        order = np.argsort(bucket, kind="stable")
        sorted_b = bucket[order]
        edges = np.searchsorted(sorted_b, np.arange(self.n_buckets + 1))
        ordered = table.take(pa.array(order))
        for b in map(int, np.flatnonzero(np.diff(edges))):
            part = ordered.slice(int(edges[b]), int(edges[b + 1] - edges[b]))
            if b not in self._writers:
                self._writers[b] = pa.ipc.new_stream(str(self.path(b)), table.schema, options=self._OPTIONS)
            self._writers[b].write_table(part)

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()

    def read(self, bucket: int) -> pa.Table | None:
        """The bucket's rows in input order, or None when no row went there."""
        path = self.path(bucket)
        if not path.exists():
            return None
        with pa.ipc.open_stream(pa.memory_map(str(path))) as reader:
            return reader.read_all()


def write_results(path: Path, seq: np.ndarray, columns: dict[str, np.ndarray | pa.Array]) -> None:
    """One bucket's per-row results, in the bucket's (increasing) `seq` order."""
    arrays = {SEQ: pa.array(seq, pa.int64())}
    for name, col in columns.items():
        arrays[name] = col if isinstance(col, pa.Array) else pa.array(col)
    pq.write_table(pa.table(arrays), path, row_group_size=RESULT_GROUP_ROWS)


class SeqJoin:
    """Per-row results from many bucket files, back in input order, chunk by chunk.

    Each file is sorted by `seq`, and every row is in exactly one file, so the rows
    with seq in [lo, hi) are a prefix of what each file has left: a streaming merge
    that holds at most one row group per file beyond the chunk itself.
    """

    def __init__(self, paths: list[Path]) -> None:
        self._sources: list[Iterator[pa.RecordBatch]] = [
            parquet_batches(p, None, RESULT_GROUP_ROWS) for p in paths
        ]
        self._pending: list[pa.Table | None] = [None] * len(paths)

    def _take_below(self, i: int, hi: int) -> list[pa.Table]:
        out: list[pa.Table] = []
        while True:
            pending = self._pending[i]
            if pending is None or pending.num_rows == 0:
                batch = next(self._sources[i], None)
                if batch is None:
                    self._pending[i] = None
                    return out
                pending = pa.Table.from_batches([batch])
            seq = pending[SEQ].to_numpy()
            cut = int(np.searchsorted(seq, hi, side="left"))
            out.append(pending.slice(0, cut))
            self._pending[i] = pending.slice(cut)
            if cut < pending.num_rows:
                return out

    def take(self, lo: int, hi: int) -> pa.Table:
        """The result rows with lo <= seq < hi, ordered by seq (all of them must exist)."""
        pieces = [t for i in range(len(self._sources)) for t in self._take_below(i, hi)]
        table = pa.concat_tables(pieces) if pieces else None
        if table is None or table.num_rows != hi - lo:
            got = 0 if table is None else table.num_rows
            raise RuntimeError(f"SeqJoin: rows {lo}..{hi - 1}: {got} results for {hi - lo} rows")
        table = table.take(pc.sort_indices(table[SEQ]))
        return table.drop_columns([SEQ])
