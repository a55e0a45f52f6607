"""dlrrec/arrow.py: the shared bounded Parquet reader and the re-cutting of tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from parquet_helpers import write_groups

from dlrrec.arrow import parquet_batches


@pytest.fixture
def groups_file(tmp_path: Path) -> Path:
    """1,000 rows of two columns in row groups of 70, 300 and 64 rows."""
    rng = np.random.default_rng(0)
    table = pa.table(
        {
            "id": pa.array(np.arange(1000)),
            "text": pa.array([f"t{v}" * int(v % 5) for v in rng.integers(0, 100, 1000)]),
        }
    )
    path = tmp_path / "g.parquet"
    write_groups(path, table, [70, 300, 64, 566])
    return path


@pytest.mark.parametrize("batch_rows", [1, 7, 64, 256, 2000])
def test_same_batches_as_iter_batches(groups_file: Path, batch_rows: int) -> None:
    want = list(pq.ParquetFile(groups_file).iter_batches(batch_size=batch_rows))
    got = list(parquet_batches(groups_file, batch_rows=batch_rows))
    assert [b.num_rows for b in got] == [b.num_rows for b in want]
    assert all(g.equals(w) for g, w in zip(got, want, strict=True))
    assert max(b.num_rows for b in got) <= batch_rows


def test_columns_and_one_batch_per_group(groups_file: Path) -> None:
    got = list(parquet_batches(groups_file, ["text"]))
    assert [b.num_rows for b in got] == [70, 300, 64, 566]
    assert got[0].schema.names == ["text"]
    whole = pq.read_table(groups_file, columns=["text"])
    assert pa.Table.from_batches(got).equals(whole)


def test_reads_one_group_at_a_time(groups_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never one `iter_batches` over several row groups (its peak grew with the file)."""
    calls: list[object] = []
    real = pq.ParquetFile.iter_batches

    def spy(self: pq.ParquetFile, *args: object, **kw: object):  # type: ignore[no-untyped-def]
        calls.append(kw.get("row_groups"))
        return real(self, *args, **kw)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    assert sum(b.num_rows for b in parquet_batches(groups_file, batch_rows=100)) == 1000
    assert calls == [[0], [1], [2], [3]]
