"""Arrow helpers shared by the stages."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def rechunk(tables: Iterator[pa.Table], size: int) -> Iterator[pa.Table]:
    """The rows of `tables` re-cut into tables of `size` rows (the last may be shorter)."""
    buf: list[pa.Table] = []
    have = 0
    for t in tables:
        buf.append(t)
        have += t.num_rows
        while have >= size:
            whole = pa.concat_tables(buf)
            yield whole.slice(0, size)
            rest = whole.slice(size)
            buf, have = [rest], rest.num_rows
    if have:
        yield pa.concat_tables(buf)


def parquet_batches(
    path: Path, columns: list[str] | None = None, batch_rows: int | None = None
) -> Iterator[pa.RecordBatch]:
    """A Parquet file's `columns` in order, `batch_rows` rows a batch (the last may be
    shorter; batches span row groups, as `ParquetFile.iter_batches`' do), or without
    `batch_rows` one batch per row group.

    Read one row group at a time (`iter_batches` over that group alone, so a huge group
    is still read a batch at a time): one `iter_batches` over the whole file held
    more the bigger the file (pyarrow 26, benchmarks/parquet_read_bench.py).
    """
    pf = pq.ParquetFile(path)
    groups = (
        pf.iter_batches(batch_size=batch_rows or pf.metadata.row_group(g).num_rows or 1,
                        row_groups=[g], columns=columns)
        for g in range(pf.num_row_groups)
    )  # fmt: skip
    batches = (b for group in groups for b in group)
    if batch_rows is None:
        yield from batches
        return
    tables = (pa.Table.from_batches([b]) for b in batches)
    for table in rechunk(tables, batch_rows):
        yield from table.combine_chunks().to_batches()
