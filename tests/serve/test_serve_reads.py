"""serve's Parquet inputs stream one row group at a time: same batches as before, and no
whole-file read (features part files and score inputs are interaction-sized)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from parquet_helpers import write_groups

from serve import recipe, score


def rows_table(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "user": pa.array([f"u{v}" for v in rng.integers(0, 50, n)]),
            "item": pa.array([f"i{v}" for v in rng.integers(0, 30, n)]),
            "label": pa.array(rng.integers(0, 2, n).astype(np.float32)),
        }
    )


def test_score_inputs_read_as_before_one_group_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trap_whole_file_reads: Callable[[], None]
) -> None:
    path = tmp_path / "pairs.parquet"
    write_groups(path, rows_table(100, 0), [30, 9, 40, 21])
    monkeypatch.setattr(score, "READ_BATCH_ROWS", 16)
    want = list(pq.ParquetFile(path).iter_batches(batch_size=16))
    trap_whole_file_reads()
    got = list(score.read_pairs(path))
    assert [b.num_rows for b in got] == [b.num_rows for b in want] == [16] * 6 + [4]
    assert all(g.equals(w) for g, w in zip(got, want, strict=True))


def test_recipe_reads_every_part_as_before_one_group_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trap_whole_file_reads: Callable[[], None]
) -> None:
    for k, (seed, sizes) in enumerate([(1, [25, 50, 5]), (2, [7]), (3, [12, 12, 1])]):
        write_groups(tmp_path / f"part-{k:05d}.parquet", rows_table(sum(sizes), seed), sizes)
    monkeypatch.setattr(recipe, "READ_BATCH_ROWS", 10)
    files = sorted(tmp_path.glob("part-*.parquet"))
    want = [b for f in files for b in pq.ParquetFile(f).iter_batches(10, columns=["item", "user"])]
    trap_whole_file_reads()
    got = list(recipe._batches(tmp_path, ["item", "user"]))
    assert [b.num_rows for b in got] == [b.num_rows for b in want]
    assert all(g.equals(w) for g, w in zip(got, want, strict=True))
    assert got[0].schema.names == ["item", "user"]
