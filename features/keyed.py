"""Keyed content tables on disk: (key, vector) rows in key order, key = entity * S + slot.

The llm/images steps write them one entity partition at a time (`KeyedWriter`), and
the entity tables read each entity's last slot back from them (`KeyedReader`), so
neither step holds every key's vector.  Row groups cover `KEY_BLOCK` keys each, the
layout of the one-shot writer these replaced.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from dlrrec.arrow import parquet_batches
from features.examples import vectors
from features.io import vector_writer
from features.schema import content_vector

KEY_BLOCK = 65_536  # keys per written row group of a keyed table


def keyed_schema(col: str, dim: int) -> pa.Schema:
    return pa.schema([pa.field("key", pa.int64(), nullable=False),
                      pa.field(col, content_vector(dim), nullable=False)])  # fmt: skip


class KeyedWriter:
    """`path`: the (key, `col`) rows added in increasing key order, one row group per
    `KEY_BLOCK` keys of the `n_keys` (an empty group where no key has a vector)."""

    def __init__(self, path: Path, col: str, dim: int, n_keys: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.schema = keyed_schema(col, dim)
        self.writer = vector_writer(path, self.schema, "key")
        self.n_keys, self.dim = n_keys, dim
        self.block = 0  # the next row group's first key
        self._keys: list[np.ndarray] = []
        self._vecs: list[np.ndarray] = []

    def add(self, keys: np.ndarray, vecs: np.ndarray) -> None:
        """Keys (int64, increasing, above every key added before) and their vectors [n, D]."""
        self._keys.append(np.asarray(keys, np.int64))
        self._vecs.append(np.asarray(vecs, np.float16).reshape(-1, self.dim))
        if len(keys):
            self._flush_below(int(keys[-1]) // KEY_BLOCK * KEY_BLOCK)

    def _flush_below(self, end: int) -> None:
        keys = np.concatenate(self._keys) if self._keys else np.zeros(0, np.int64)
        vecs = np.concatenate(self._vecs) if self._vecs else np.zeros((0, self.dim), np.float16)
        while self.block < end:
            cut = int(np.searchsorted(keys, self.block + KEY_BLOCK))
            table = pa.Table.from_arrays([pa.array(keys[:cut]), vectors(vecs[:cut])],
                                         schema=self.schema)  # fmt: skip
            self.writer.write_table(table)
            keys, vecs = keys[cut:], vecs[cut:]
            self.block += KEY_BLOCK
        self._keys, self._vecs = [keys], [vecs]

    def close(self) -> None:
        self._flush_below(self.n_keys)
        self.writer.close()


class KeyedReader:
    """Each entity's last slot (`slots - 1`) of a keyed table, entity ids in increasing
    order across calls; reads the file once, one row group beyond the ids asked for."""

    def __init__(self, path: Path, slots: int) -> None:
        self.slots = slots
        self._batches: Iterator[pa.RecordBatch] = parquet_batches(path)
        self._keys = np.zeros(0, np.int64)
        self._vecs = np.zeros((0, 0), np.float16)
        self._done = False
        self._last = -1

    def _fill(self, until: int) -> None:
        while not self._done and (not len(self._keys) or self._keys[-1] < until):
            batch = next(self._batches, None)
            if batch is None:
                self._done = True
                return
            col = batch.column(1)
            vecs = np.asarray(col.flatten().to_numpy(zero_copy_only=False), np.float16)
            vecs = vecs.reshape(len(batch), col.type.list_size)
            self._keys = np.concatenate([self._keys, batch.column(0).to_numpy()])
            self._vecs = vecs if not len(self._vecs) else np.concatenate([self._vecs, vecs])

    def take(self, ids: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """(float32 [n, D] vectors, bool [n] has one) of increasing entity `ids`."""
        ids = np.asarray(ids, np.int64)
        out, has = np.zeros((len(ids), dim), np.float32), np.zeros(len(ids), bool)
        if not len(ids):
            return out, has
        if ids[0] <= self._last or (np.diff(ids) <= 0).any():
            raise RuntimeError("KeyedReader: entity ids must increase across calls")
        want = ids * self.slots + self.slots - 1
        self._fill(int(want[-1]))
        at = np.searchsorted(self._keys, want)
        found = at < len(self._keys)
        found[found] = self._keys[at[found]] == want[found]
        if len(self._vecs):
            out[found] = self._vecs[at[found]]
        has[:] = found
        keep = int(np.searchsorted(self._keys, want[-1], side="right"))
        self._keys, self._vecs = self._keys[keep:], self._vecs[keep:]
        self._last = int(ids[-1])
        return out, has
