"""Pass 1 of the streaming build: the interactions -> the row index, chunk by chunk.

The index is a Parquet file of five fixed-width columns per row, in input order (bad
rows dropped): the user and item indices, the timestamp, the rating, and the row's
fold hash (`stats.fold_hashes`: the only per-row value that needs the raw id strings).
Every later pass of the build reads it, a chunk at a time, instead of the input.
Per-entity row counts come out of the same pass; that is what sizes the buckets of
features/spill.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dlrrec.arrow import parquet_batches, rechunk
from dlrrec.config import DataError
from features.bad_rows import BadRows, Policy, first_repeat, repeated_rows, resolve
from features.io import open_scan, scan_batches
from features.spill import Spill
from features.split import _mix64
from features.stats import fold_hashes
from features.workers import Workers, result

CHUNK_ROWS = 1 << 18  # rows per index chunk: what every pass holds at once
INDEX_SCHEMA = pa.schema(
    [
        ("user", pa.int64()),
        ("item", pa.int64()),
        ("timestamp", pa.int64()),
        ("rating", pa.float64()),
        ("fold_hash", pa.uint64()),
    ]
)
SEQ_BUCKETS = 64  # hash partitions of the review-id check (at least)
SEQ_BUCKET_ROWS = 1 << 22  # ids per partition at most, on average: what one check holds
SEQ_CHUNK_ROWS = 1 << 16  # ids spilled at once, at least (`_at_least`)
Repeat = tuple[int, int, object]  # (position, the earlier position it repeats, the id)


@dataclass
class RowIndex:
    path: Path
    rows: int
    user_rows: np.ndarray  # int64 [U]: rows per user, every split
    item_rows: np.ndarray  # int64 [I]

    def chunks(self, columns: list[str] | None = None) -> Iterator[tuple[int, pa.Table]]:
        """(seq of the chunk's first row, the chunk) in input order."""
        seq = 0
        for batch in parquet_batches(self.path, columns, CHUNK_ROWS):
            yield seq, pa.Table.from_batches([batch])
            seq += batch.num_rows


def string_hashes(values: pa.Array) -> np.ndarray:
    """uint64 [N] hash of each string's bytes (partitions rows by id; never a key)."""
    values = pc.cast(values, pa.large_binary())
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int64)[
        values.offset : values.offset + len(values) + 1
    ]
    data = np.frombuffer(values.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
    lengths = np.diff(offsets)
    pos = np.arange(len(data), dtype=np.int64) - np.repeat(offsets[:-1] - offsets[0], lengths)
    with np.errstate(over="ignore"):
        mixed = _mix64((data.astype(np.uint64) << np.uint64(32)) | pos.astype(np.uint64))
        cum = np.concatenate([np.zeros(1, np.uint64), np.cumsum(mixed, dtype=np.uint64)])
        ends = offsets - offsets[0]
        return _mix64(cum[ends[1:]] - cum[ends[:-1]] + lengths.astype(np.uint64))


def _at_least(chunks: Iterable[pa.Array], rows: int) -> Iterator[pa.Array]:
    """`chunks` joined into arrays of `rows` or more (the last may be shorter).

    Every `Spill.add` writes a batch to each bucket it touches: a CSV's ~2.5k-row blocks
    spilled as they came would write a few dozen ids a batch, and a batch has a fixed
    cost. (When spills were Parquet, whose writer holds ~2 KB per row group until it
    closes, they also grew the peak from 0.19 to 0.31 GiB between 400k and 3.2M reviews.)
    """
    held: list[pa.Array] = []
    n = 0
    for chunk in chunks:
        held.append(chunk)
        n += len(chunk)
        if n >= rows:
            yield pa.concat_arrays(held)
            held, n = [], 0
    if held:
        yield pa.concat_arrays(held)


def repeated_ids(
    ids: Iterable[pa.Array], rows: int, work: Path
) -> tuple[np.ndarray, Repeat | None]:
    """Positions in the stream of `ids` (at most `rows` of them) whose id repeats an
    earlier position's.

    The ids are partitioned by hash into spill files under `work` (`SEQ_BUCKETS`, more
    past `SEQ_BUCKET_ROWS` ids each), so each bucket holds every position of its ids and
    is checked alone (features/bad_rows.py `repeated_rows`); only one chunk of ids and
    one bucket are held at a time.

    Returns:
        (sorted int64 positions, the first repeat as (position, the earlier position it
        repeats, the id), or None when no id repeats).
    """
    buckets = max(SEQ_BUCKETS, -(-rows // SEQ_BUCKET_ROWS))
    spill = Spill(work, buckets)
    seq = 0
    for chunk in _at_least(ids, SEQ_CHUNK_ROWS):
        table = pa.table({"seq": pa.array(np.arange(seq, seq + len(chunk))), "id": chunk})
        spill.add(table, (string_hashes(chunk) % np.uint64(buckets)).astype(np.int64))
        seq += len(chunk)
    spill.close()
    drop, first = [], None
    for b in range(buckets):
        table = spill.read(b)
        if table is None:
            continue
        mask = repeated_rows(table["id"])
        if mask.any():
            seqs = table["seq"].to_numpy()
            drop.append(seqs[mask])
            row, earlier, value = first_repeat(table["id"], mask)
            if first is None or seqs[row] < first[0]:
                first = (int(seqs[row]), int(seqs[earlier]), value)
    if first is None:
        return np.zeros(0, dtype=np.int64), None
    return np.sort(np.concatenate(drop)), first


def repeated_review_rows(
    path: Path,
    rating_range: tuple[float, float] | None,
    on_bad_rows: Policy,
    work: Path,
) -> tuple[np.ndarray, int]:
    """Rows (numbered after bad rows are dropped) whose review id repeats an earlier row's
    (`repeated_ids` over the file's checked batches).

    Returns:
        (sorted int64 rows to drop, how many).

    Raises:
        DataError: with `error`, naming the first repeat and the row it repeats.
    """
    batches = scan_batches(path, rating_range, on_bad_rows)
    ids = (b.column("review_id") for b in batches)
    rows, first = repeated_ids(ids, open_scan(path)[0].metadata.num_rows, work / "review-ids")
    if first is None:
        return rows, 0
    message = (
        f"{path}: column 'review_id' row {first[0]}: repeats the id {first[2]!r} of row "
        f"{first[1]}; ids must be unique"
    )
    resolve([BadRows("duplicate_review_id", np.ones(1, dtype=bool), message)], 1, on_bad_rows)
    return rows, len(rows)


def drop_rows(batches: Iterable[pa.RecordBatch], drop: np.ndarray) -> Iterator[pa.RecordBatch]:
    """`batches` without the rows at the sorted stream positions `drop`."""
    seq = 0
    for batch in batches:
        n = batch.num_rows
        lo, hi = np.searchsorted(drop, [seq, seq + n])
        if hi > lo:
            keep = np.ones(n, dtype=bool)
            keep[drop[lo:hi] - seq] = False
            batch = batch.filter(pa.array(keep))
        seq += n
        yield batch


def _lookup(values: pa.Array, ids: pa.Array, seq: int, where: tuple[Path, str, Path]) -> np.ndarray:
    idx = pc.index_in(values, value_set=ids)
    if idx.null_count:
        row = pc.index(pc.is_null(idx), True).as_py()
        path, col, known = where
        raise DataError(
            f"{path}: column {col!r} row {seq + row}: names {values[row].as_py()!r}, "
            f"which is not in {known}"
        )
    return np.asarray(idx.to_numpy(zero_copy_only=False), dtype=np.int64)


def _index_chunk(
    batch: pa.RecordBatch, user_ids: pa.Array, item_ids: pa.Array, seq: int, paths: dict[str, Path]
) -> tuple[pa.Table, list, list, list]:
    user = _lookup(
        batch.column("user"), user_ids, seq, (paths["interactions"], "user", paths["users"])
    )
    item = _lookup(
        batch.column("item"), item_ids, seq, (paths["interactions"], "item", paths["items"])
    )
    ts = np.asarray(batch.column("timestamp").to_numpy(zero_copy_only=False), dtype=np.int64)
    rating = np.asarray(batch.column("rating").to_numpy(zero_copy_only=False), dtype=np.float64)
    table = pa.table({"user": user, "item": item, "timestamp": ts, "rating": rating})
    return table, batch.column("user").to_pylist(), batch.column("item").to_pylist(), ts.tolist()


def build_index(
    batches: Iterator[pa.RecordBatch],
    entity_ids: tuple[pa.Array, pa.Array],
    seed: int,
    out: Path,
    paths: dict[str, Path],
    workers: Workers,
) -> RowIndex:
    """Write the row index of `batches` (checked interactions in input order) to `out`.

    Args:
        entity_ids: (user ids, item ids) in index order.
        seed: the fold-hash seed.
        paths: {"interactions", "users", "items": file} named by unknown-id errors.
        workers: hash chunks in worker processes while the next chunk is read.
    """
    user_ids, item_ids = entity_ids
    user_rows = np.zeros(len(user_ids), dtype=np.int64)
    item_rows = np.zeros(len(item_ids), dtype=np.int64)
    writer = pq.ParquetWriter(out, INDEX_SCHEMA)
    pending: list = []
    seq = 0

    def flush(keep: int) -> None:
        while len(pending) > keep:
            table, hashes = pending.pop(0)
            writer.write_table(table.append_column("fold_hash", pa.array(result(hashes), pa.uint64())),
                               row_group_size=CHUNK_ROWS)  # fmt: skip

    tables = (pa.Table.from_batches([b]) for b in batches)
    for batch in (t.combine_chunks().to_batches()[0] for t in rechunk(tables, CHUNK_ROWS)):
        table, users, items, ts = _index_chunk(batch, user_ids, item_ids, seq, paths)
        user_rows += np.bincount(table["user"].to_numpy(), minlength=len(user_rows))
        item_rows += np.bincount(table["item"].to_numpy(), minlength=len(item_rows))
        args = (users, items, ts, seed)
        pending.append((table, workers.submit(fold_hashes, *args, first=seq == 0)))
        seq += table.num_rows
        flush(keep=4)
    flush(keep=0)
    writer.close()
    return RowIndex(out, seq, user_rows, item_rows)
