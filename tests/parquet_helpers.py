"""Parquet files with chosen row groups, for the tests of the bounded readers."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def write_groups(path: Path, table: pa.Table, sizes: list[int]) -> None:
    """`table` as one row group per entry of `sizes`."""
    assert sum(sizes) == table.num_rows
    with pq.ParquetWriter(path, table.schema) as w:
        at = 0
        for size in sizes:
            w.write_table(table.slice(at, size), row_group_size=size)
            at += size
    assert pq.ParquetFile(path).num_row_groups == len(sizes)
