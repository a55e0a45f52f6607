"""Shared test setup: make `tests/` importable (for dist_helpers), keep runs offline, and
trap whole-file Parquet reads."""

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def trap_whole_file_reads(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """A call that makes any whole-file Parquet read fail from then on: `read_table`,
    `ParquetFile.read`, or `ParquetFile.iter_batches` without `row_groups=` (its memory
    grew with the file, benchmarks/parquet_read_bench.py).  Compute the expected values
    first, then arm the trap and run the reader under test."""

    def arm() -> None:
        real = pq.ParquetFile.iter_batches

        def iter_batches(self: pq.ParquetFile, *args: Any, **kw: Any) -> Any:
            if kw.get("row_groups") is None:
                raise AssertionError("ParquetFile.iter_batches over the whole file")
            return real(self, *args, **kw)

        def whole(*args: Any, **kw: Any) -> Any:
            raise AssertionError("a whole-file Parquet read")

        monkeypatch.setattr(pq.ParquetFile, "iter_batches", iter_batches)
        monkeypatch.setattr(pq.ParquetFile, "read", whole)
        monkeypatch.setattr(pq, "read_table", whole)

    return arm
