"""Texts gathered in runs (one partition's summaries, one chunk's captions) and embedded
in one sorted pass, as if by one `features/text.py embed_texts` call over all of them.

Why not embed each run on its own: MiniLM's float16 bits depend on a text's batch
neighbours, and `embed_texts` batches the distinct texts in sorted order, so only the
same global order gives the in-memory build's vectors (text.py `SortedEncoder`).  Each
run is therefore written sorted and distinct to disk, the runs are merged (one batch
per run held), the merged stream is encoded, and each distinct text's vector lands at
its rank in a float16 memmap; each run keeps the ranks of its texts, so a caller maps
(run, the text's index in its run) to a vector.  Memory: one block of texts, one batch
per run, and one run's ranks when reading back; never all texts or all vectors.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dlrrec.arrow import parquet_batches
from features.spill import Spill
from features.text import SortedEncoder

RUN_BATCH = 1 << 14  # texts per row group of a run, and per merge read
MERGE_BLOCK = 1 << 14  # merged distinct texts handed to the encoder at a time


class EmbedRuns:
    """Runs of texts -> one sorted embedding (see the module docstring).

    Args:
        folder: work folder for the runs, the ranks and the vectors.
        encoder: builds the `SortedEncoder` (called once, and only if there is a text).
        dim: D, for the empty case.
    """

    def __init__(self, folder: Path, encoder: Callable[[], SortedEncoder], dim: int) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.encoder = encoder
        self.dim = dim
        self.sizes: list[int] = []
        self.distinct = 0
        self._ranks: Spill | None = None

    def _run(self, r: int) -> Path:
        return self.folder / f"run-{r:05d}.parquet"

    def add(self, texts: Sequence[str]) -> tuple[int, np.ndarray]:
        """A run: (its id, int64 [len(texts)] each text's index among the run's distinct texts)."""
        uniq, inverse = np.unique(np.asarray(texts, dtype=object).astype(str), return_inverse=True)
        pq.write_table(pa.table({"text": pa.array(uniq.tolist(), pa.string())}),
                       self._run(len(self.sizes)), row_group_size=RUN_BATCH)  # fmt: skip
        self.sizes.append(len(uniq))
        return len(self.sizes) - 1, inverse.reshape(-1).astype(np.int64)

    def _texts(self, r: int) -> Iterator[tuple[str, int]]:
        for batch in parquet_batches(self._run(r), None, RUN_BATCH):
            for t in batch.column(0).to_pylist():
                yield t, r

    def embed(self) -> int:
        """Embed every run's texts; returns how many distinct texts there were."""
        self._ranks = Spill(self.folder / "ranks", max(len(self.sizes), 1))
        total = sum(self.sizes)
        if not total:
            self._ranks.close()
            return 0
        out = np.lib.format.open_memmap(self.folder / "vectors.npy", mode="w+",
                                        dtype=np.float16, shape=(total, self.dim))  # fmt: skip
        with self.encoder().open(out) as enc:
            last: str | None = None
            texts: list[str] = []
            run_of: list[int] = []
            rank_of: list[int] = []
            for text, r in heapq.merge(*(self._texts(r) for r in range(len(self.sizes)))):
                if text != last:
                    texts.append(text)
                    last = text
                run_of.append(r)
                rank_of.append(self.distinct + len(texts) - 1)
                if len(texts) >= MERGE_BLOCK:
                    self._flush(enc, texts, run_of, rank_of)
                    texts, run_of, rank_of = [], [], []
            self._flush(enc, texts, run_of, rank_of)
        out.flush()
        del out
        self._ranks.close()
        return self.distinct

    def _flush(self, enc: SortedEncoder, texts: list[str], run: list[int], rank: list[int]) -> None:
        if not run:
            return
        enc.add(texts, np.arange(self.distinct, self.distinct + len(texts)))
        self.distinct += len(texts)
        assert self._ranks is not None
        self._ranks.add(pa.table({"rank": pa.array(rank, pa.int64())}), np.asarray(run, np.int64))

    def vectors(self, run: int, local: np.ndarray) -> np.ndarray:
        """float32 [n, D]: the vectors of run `run`'s texts at indices `local`."""
        if not len(local):
            return np.zeros((0, self.dim), np.float32)
        assert self._ranks is not None
        table = self._ranks.read(run)
        assert table is not None
        ranks = table["rank"].to_numpy()[local]
        vecs = np.load(self.folder / "vectors.npy", mmap_mode="r")
        out = np.asarray(vecs[ranks], dtype=np.float32)
        del vecs  # unmapped: its touched pages leave this process
        return out
