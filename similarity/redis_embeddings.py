"""Retrieval embeddings of an export in Redis, beside the SWING pairs, same scheme.

`dlrrec export redis_url=redis://HOST:6379/0` writes `RUN/export/embeddings/*.parquet`
under the prefix `P:emb` (P = `redis_prefix`), with the layout and switching rules of
`similarity.redis_store` / `redis_export`:

    P:emb:current          string: the version readers use
    P:emb:versions         sorted set: version -> unix time it became current
    P:emb:V:_meta          hash: rows per kind, fingerprint, complete=1 once all is written
    P:emb:V:KIND:ID        hash: vector column -> float32 little-endian bytes
                           (KIND = user | item, ID = the source id)

The version is a content hash of the embedding files, so re-exporting the same export
is a no-op; a new one is written in full (each key's DEL + HSET in one MULTI/EXEC batch)
before `current` moves, and the old version's keys expire after the grace period.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import redis

from dlrrec.arrow import parquet_batches
from dlrrec.artifacts import hash_tree
from dlrrec.config import DataError
from similarity.redis_export import switch_current
from similarity.redis_store import connect, key_anchor, key_current, key_meta, safe_url, text

BATCH_KEYS = 1000
KINDS = ("user", "item")


def emb_prefix(prefix: str) -> str:
    return f"{prefix}:emb"


def write_embeddings(
    client: redis.Redis, prefix: str, version: str, folder: Path
) -> dict[str, int]:
    """Every entity's hash of `version`; returns the rows written per kind."""
    written = {}
    for kind in KINDS:
        path = folder / f"{kind}s.parquet"
        vec_cols = [f.name for f in pq.read_schema(path) if pa.types.is_fixed_size_list(f.type)]
        written[kind] = 0
        for batch in parquet_batches(path, [kind, *vec_cols], BATCH_KEYS):
            ids = batch.column(0).to_pylist()
            vecs = {
                c: np.stack(batch.column(c).to_numpy(zero_copy_only=False)).astype("<f4")
                for c in vec_cols
            }
            pipe = client.pipeline(transaction=True)
            for r, entity in enumerate(ids):
                key = key_anchor(prefix, version, kind, str(entity))
                pipe.delete(key)
                pipe.hset(key, mapping={c: v[r].tobytes() for c, v in vecs.items()})
            pipe.execute()
            written[kind] += len(ids)
    return written


def export_embeddings(
    url: str, prefix: str, folder: Path, fingerprint: str, grace_s: int = 3600
) -> dict[str, Any]:
    """Write `folder` ({users,items}.parquet) as a new version and make it current."""
    p = emb_prefix(prefix)
    files = sorted(folder.glob("*.parquet"))
    version = "v" + hashlib.sha256(f"{fingerprint}:{hash_tree(files)}".encode()).hexdigest()[:16]
    client = connect(url)
    try:
        current = client.get(key_current(p))
        if (
            current is not None
            and text(current) == version
            and client.hget(key_meta(p, version), "complete") == b"1"
        ):
            return {"version": version, "status": "already current"}
        written = write_embeddings(client, p, version, folder)
        client.hset(key_meta(p, version), mapping={"complete": 1, "fingerprint": fingerprint,
                                                   **{f"rows_{k}": n for k, n in written.items()}})  # fmt: skip
        client.persist(key_meta(p, version))
        previous = switch_current(client, p, version, grace_s)
    except redis.RedisError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"redis {safe_url(url)}: embedding export failed: {first}") from None
    finally:
        client.close()
    return {
        "version": version,
        "previous": previous,
        "rows": written,
        "time": time.time(),
        "status": "exported",
    }


def read_embedding(
    client: redis.Redis, prefix: str, kind: str, entity: str
) -> dict[str, np.ndarray] | None:
    """{vector column: float32 [D]} of one entity in the current version (None if absent)."""
    p = emb_prefix(prefix)
    version = client.get(key_current(p))
    if version is None:
        raise DataError(f"redis prefix {p!r}: no embeddings exported yet (no {key_current(p)})")
    raw = client.hgetall(key_anchor(p, text(version), kind, entity))
    if not raw:
        return None
    return {
        text(k): np.frombuffer(bytes(v), dtype="<f4") for k, v in cast(dict[Any, Any], raw).items()
    }
