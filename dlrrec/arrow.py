"""Arrow helpers shared by the stages."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa


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
