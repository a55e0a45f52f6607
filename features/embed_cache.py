"""An on-disk cache of text embeddings: (model, text) -> float16 vector, in SQLite.

One row per distinct text: `key` = sha256(model id, NUL, text) (16 bytes), `vec` =
the float16 vector's bytes.  SQLite because a cache of millions of texts needs a
point lookup and an atomic append, which a folder of one file per text or a
rewritten Parquet file does not give; it is in the stdlib and safe across processes.

The model id hashes the model folder's file names, sizes and config files, so a
cache survives moving the venv but not swapping the weights.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from dlrrec.config import DataError

# SQLite's default limit on host parameters is 32766 (>= 3.32); stay well under it.
_LOOKUP_CHUNK = 900


def model_id(path: str | Path) -> str:
    """A stable id of a model folder (names, sizes, config contents); the path if not a folder."""
    root = Path(path)
    if not root.is_dir():
        return str(path)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = f.relative_to(root).as_posix()
        h.update(f"{rel}\0{f.stat().st_size}\0".encode())
        if f.suffix == ".json" and f.stat().st_size < 1 << 20:
            h.update(f.read_bytes())
    return h.hexdigest()


def text_keys(model: str, texts: Iterable[str]) -> list[bytes]:
    prefix = model.encode() + b"\0"
    return [hashlib.sha256(prefix + t.encode()).digest()[:16] for t in texts]


class EmbeddingCache:
    """`get` / `put` float16 vectors by key; one file, opened per instance.

    Args:
        path: the SQLite file (its folder is created).
        dim: vector length; a cache file holding another length is an error.
    """

    def __init__(self, path: str | Path, dim: int) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.dim = dim
        self.db = sqlite3.connect(self.path, timeout=60)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS vec (key BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID"
        )

    def get(self, keys: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """(found bool [n], float16 [n, dim] with zeros where not found)."""
        out = np.zeros((len(keys), self.dim), dtype=np.float16)
        found = np.zeros(len(keys), dtype=bool)
        pos = {k: i for i, k in enumerate(keys)}
        for s in range(0, len(keys), _LOOKUP_CHUNK):
            chunk = keys[s : s + _LOOKUP_CHUNK]
            marks = ",".join("?" * len(chunk))
            for k, v in self.db.execute(f"SELECT key, v FROM vec WHERE key IN ({marks})", chunk):
                vec = np.frombuffer(v, dtype=np.float16)
                if vec.size != self.dim:
                    continue  # another model's length under a colliding id: recompute
                if not np.isfinite(vec).all():
                    # A vector we never write (encode output is finite): the file is
                    # damaged, and averaging it into profiles would spread NaN silently.
                    raise DataError(
                        f"{self.path}: column 'v' of key {k.hex()} holds NaN/inf; the cache "
                        "is damaged, delete the file (it is rebuilt on the next run)"
                    )
                out[pos[k]] = vec
                found[pos[k]] = True
        return found, out

    def put(self, keys: list[bytes], vecs: np.ndarray) -> None:
        v16 = np.ascontiguousarray(vecs, dtype=np.float16)
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO vec (key, v) VALUES (?, ?)",
                ((k, v16[i].tobytes()) for i, k in enumerate(keys)),
            )

    def close(self) -> None:
        self.db.close()
