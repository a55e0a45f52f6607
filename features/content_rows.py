"""The rows the content steps read (features/content.py, features/summaries.py,
features/captions.py): index chunks of rows with their raw columns, each row's summary
slot on disk, and the build's other inputs to those steps.

A module of its own so the steps and their orchestrator import it from below instead of
from each other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dlrrec.arrow import parquet_batches
from features.text import SortedEncoder


@dataclass
class RowChunk:
    """One index chunk of rows (int64 [n] arrays) and its interactions' raw columns."""

    lo: int  # the chunk's first row
    user: np.ndarray
    item: np.ndarray
    ts: np.ndarray
    train: np.ndarray  # bool [n]
    profile_slot: np.ndarray  # int64 [n] (features/owners.py `OwnerPlan.profile_slot`)
    raw: pa.Table | None  # the columns asked for, in the source's types


# columns -> the chunks in index order (one pass over the interactions per call)
Chunks = Callable[[list[str]], Iterator[RowChunk]]


class RowSlots:
    """Each row's summary slot (int8, row order) in a file, read back chunk by chunk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: pq.ParquetWriter | None = None
        self._batches: Iterator[pa.RecordBatch] | None = None
        self._pending = np.zeros(0, np.int8)
        self._next = 0

    def write(self, slot: np.ndarray) -> None:
        table = pa.table({"slot": pa.array(slot.astype(np.int8))})
        self._writer = self._writer or pq.ParquetWriter(self.path, table.schema)
        self._writer.write_table(table)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

    def take(self, lo: int, n: int) -> np.ndarray:
        """Rows lo..lo+n-1 (calls follow the row order)."""
        assert lo == self._next, "RowSlots: chunks must be read in row order"
        if self._batches is None:
            self._batches = parquet_batches(self.path)
        parts = [self._pending]
        have = len(self._pending)
        while have < n:
            got = next(self._batches).column(0).to_numpy()
            parts.append(got)
            have += len(got)
        rows = np.concatenate(parts)
        self._pending, self._next = rows[n:], lo + n
        return rows[:n]


@dataclass(frozen=True)
class ContentInputs:
    """What the llm and images steps read besides the row chunks.

    items: the item table in index order (optional columns: captions, image_urls,
        price_tier, categories); user_names: [U] raw user ids in index order.
    temporal: the split is temporal: summaries read strictly earlier time blocks,
        caption vectors earlier profile blocks.  seed: the fold hash seed.
    raw_dir: default folder of image files.  encoder: MiniLM (features/text.py).
    dim: D.  slots: the profile slots S.
    user_train, item_train: int64 [U], [I] training rows per entity (sizes partitions);
    n_train: training rows.  work: scratch folder; stage: the features folder.
    """

    items: pa.Table
    user_names: pa.Array
    temporal: bool
    seed: int
    raw_dir: str
    encoder: Callable[[], SortedEncoder]
    dim: int
    slots: int
    user_train: np.ndarray
    item_train: np.ndarray
    n_train: int
    work: Path
    stage: Path
