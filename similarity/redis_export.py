"""dlrrec similarity export-redis --config configs/movielens-100k.yaml redis_url=redis://localhost:6379/0

Export `run_dir/similarity/{item_item,user_user}` to Redis: one sorted set per anchor
(neighbour id -> score) under a version named by the tables' content hash, written in
pipelined MULTI/EXEC batches; then `current` switches to the new version in one atomic
step and the previous version's keys expire after `redis_grace_s` seconds.  Layout and
connection rules: `similarity.redis_store`.

Keys and members are the source's ids: the tables' ids go through the id map of their
input (`similarity.tables.read_id_map`), and item titles, when the raw items table has
them, go to one hash per version.

Re-exporting the same tables is idempotent: when that version is already current and
complete nothing is written; otherwise its keys are rewritten (each key's DEL + ZADD in
one transaction, so no reader ever sees a partial list) before the switch.

The password comes only from $REDIS_PASSWORD.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import pyarrow as pa
import redis

from dlrrec.arrow import parquet_batches
from dlrrec.artifacts import hash_tree
from dlrrec.config import DataError
from dlrrec.entry import run_job
from dlrrec.meta import SimilarityMeta, read_similarity_meta
from similarity.config import SwingConfig
from similarity.id_maps import ENTITY, IdMap, read_id_map, read_item_titles
from similarity.redis_store import (
    connect,
    key_anchor,
    key_current,
    key_meta,
    key_titles,
    key_versions,
    safe_url,
    text,
)
from similarity.tables import KINDS

# Pairs per pipelined transaction: large enough to amortise round trips, small enough
# that one MULTI/EXEC does not block other clients for long (~10 ms).
BATCH_PAIRS = 20_000

# GET old; SET new; record the switch time -- one atomic step on the server.
_SWITCH = """
local old = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return old
"""


# What the keys and members name: 2 = the source's ids on every path. Version 1 wrote
# the features stage's dense indexes for tables built from features; it is part of the
# version hash so that a re-export of the same tables replaces such a version.
KEY_SCHEME = 2


def table_version(stage: Path, meta: SimilarityMeta) -> str:
    """A short content hash of the tables (and id maps) a version holds."""
    files = sorted(stage.glob("*/part-*.parquet")) + sorted(stage.glob("ids/*.parquet"))
    h = hashlib.sha256(f"{KEY_SCHEME}:{meta.get('fingerprint')}:{hash_tree(files)}".encode())
    return "v" + h.hexdigest()[:16]


def _as_text(ids: np.ndarray, id_map: IdMap) -> list[str]:
    """The source ids of table ids."""
    if id_map.names is None:
        return ids.astype(str).tolist()
    return cast(list[str], id_map.names.take(pa.array(ids)).to_pylist())


def _bulk(b: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(b), b)


def _zadd_commands(key: bytes, score: list[float], member: list[bytes]) -> bytes:
    """RESP of `DEL key` and `ZADD key s1 m1 s2 m2 ...`, packed here in one pass.

    redis-py's per-argument packing costs ~15 us a pair; this is what made the export
    slow.  Scores are written as `repr(float)`, as redis-py writes them.
    """
    head = b"*2\r\n$3\r\nDEL\r\n" + _bulk(key)
    head += b"*%d\r\n$4\r\nZADD\r\n" % (2 + 2 * len(member)) + _bulk(key)
    body = b"".join(
        [b"$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(r), r, len(m), m)
         for r, m in zip((repr(x).encode() for x in score), member)]
    )  # fmt: skip
    return head + body


class _Transaction:
    """Pipelined MULTI / (DEL + ZADD)* / EXEC on one connection of the client's pool.

    Uses the pool's connection (so AUTH, TLS and the database are as configured) and
    sends pre-packed commands; an error reply inside the transaction raises.
    """

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.chunks: list[bytes] = []
        self.commands = 0

    def add(self, packed: bytes, commands: int) -> None:
        self.chunks.append(packed)
        self.commands += commands

    def execute(self) -> None:
        if not self.commands:
            return
        payload = b"*1\r\n$5\r\nMULTI\r\n" + b"".join(self.chunks) + b"*1\r\n$4\r\nEXEC\r\n"
        commands = self.commands
        self.chunks, self.commands = [], 0
        pool = self.client.connection_pool
        conn = pool.get_connection("MULTI")
        try:
            conn.send_packed_command([payload], check_health=True)
            replies = [conn.read_response() for _ in range(commands + 1)]
            result = conn.read_response()
        except BaseException:
            conn.disconnect()  # the stream may hold unread replies: never reuse it
            raise
        finally:
            pool.release(conn)
        for r in [*replies, *(result or [])]:
            if isinstance(r, Exception):
                raise r
        if result is None:
            raise redis.ResponseError("EXEC aborted the transaction")


def write_version(
    client: redis.Redis,
    prefix: str,
    version: str,
    stage: Path,
    id_maps: dict[str, IdMap],
    batch_pairs: int = BATCH_PAIRS,
) -> dict[str, int]:
    """Write every anchor's sorted set of `version`, keyed by source ids; returns pairs per kind.

    Each anchor's DEL + ZADD sit in one MULTI/EXEC batch of about `batch_pairs` pairs,
    so a reader sees an anchor's old list or its whole new one, never a part.
    """
    written: dict[str, int] = {}
    for kind in KINDS:
        names = id_maps[kind]
        written[kind] = 0
        tx = _Transaction(client)
        queued = 0
        for t in _anchor_runs(sorted((stage / kind).glob("part-*.parquet")), batch_pairs):
            anchor = t["anchor"].to_numpy()
            neighbor = [x.encode() for x in _as_text(t["neighbor"].to_numpy(), names)]
            score = t["score"].to_numpy().astype(np.float64).tolist()
            starts = np.flatnonzero(np.diff(anchor)) + 1
            bounds = [0, *starts.tolist(), len(anchor)]
            anchor_text = _as_text(anchor[bounds[:-1]], names)
            for a, lo, hi in zip(anchor_text, bounds[:-1], bounds[1:]):
                key = key_anchor(prefix, version, kind, a).encode()
                tx.add(_zadd_commands(key, score[lo:hi], neighbor[lo:hi]), 2)
                queued += hi - lo
                if queued >= batch_pairs:
                    tx.execute()
                    queued = 0
            written[kind] += len(anchor)
        tx.execute()
    return written


def _anchor_runs(parts: list[Path], batch_rows: int) -> Iterator[pa.Table]:
    """The pair tables' rows, about `batch_rows` at a time, each anchor's pairs whole in
    one table: a part is read one row group at a time, and the last anchor of a batch
    is held back until a later batch shows its run has ended (its DEL + ZADD must go
    in one transaction)."""
    held: pa.Table | None = None
    for part in parts:
        for batch in parquet_batches(part, ["anchor", "neighbor", "score"], batch_rows):
            t = pa.Table.from_batches([batch])
            if held is not None:
                t = pa.concat_tables([held, t])
            if t.num_rows == 0:
                continue
            other = np.flatnonzero(t["anchor"].to_numpy() != t["anchor"][-1].as_py())
            cut = int(other[-1]) + 1 if len(other) else 0  # where the last anchor's run starts
            if cut:
                yield t.slice(0, cut)
            held = t.slice(cut)
    if held is not None and held.num_rows:
        yield held


def write_titles(client: redis.Redis, prefix: str, version: str, titles: pa.Table) -> int:
    """The version's item id -> title hash, in pipelined batches; returns the count.

    No transaction is needed: readers look titles up only in the current version, and
    this one becomes current after every key is written.
    """
    key = key_titles(prefix, version)
    client.delete(key)
    for batch in titles.to_batches(max_chunksize=BATCH_PAIRS):
        ids, names = batch.column(0).to_pylist(), batch.column(1).to_pylist()
        client.hset(key, mapping=dict(zip(ids, names)))
    return titles.num_rows


def switch_current(client: redis.Redis, prefix: str, version: str, grace_s: int) -> str | None:
    """Point `current` at `version` atomically; older versions' keys expire after grace.

    Returns the version that was current before (None if none).
    """
    old = client.eval(_SWITCH, 2, key_current(prefix), key_versions(prefix), version, time.time())
    old_version = text(old) if old else None
    for raw in cast(list[Any], client.zrange(key_versions(prefix), 0, -1)):
        v = text(raw)
        if v == version:
            continue
        pattern = _glob_escape(f"{prefix}:{v}:") + "*"
        pipe = client.pipeline(transaction=False)
        for key in client.scan_iter(match=pattern, count=1000):
            pipe.expire(key, grace_s, nx=True)
            if len(pipe) >= 1000:
                pipe.execute()
        pipe.zrem(key_versions(prefix), v)
        pipe.execute()
    return old_version


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def export(
    client: redis.Redis, prefix: str, stage: Path, grace_s: int, batch_pairs: int = BATCH_PAIRS
) -> dict[str, Any]:
    """Export the tables in `stage` (a finished `run_dir/similarity`); see module doc."""
    meta = read_similarity_meta(stage)
    version = table_version(stage, meta)
    start = time.perf_counter()
    current = client.get(key_current(prefix))
    complete = client.hget(key_meta(prefix, version), "complete") == b"1"
    if current is not None and text(current) == version and complete:
        return {"version": version, "pairs": 0, "seconds": 0.0, "status": "already current"}
    id_maps = {kind: read_id_map(stage, meta, ENTITY[kind]) for kind in KINDS}
    written = write_version(client, prefix, version, stage, id_maps, batch_pairs)
    titles = read_item_titles(stage, meta)
    n_titles = write_titles(client, prefix, version, titles) if titles is not None else 0
    client.hset(
        key_meta(prefix, version),
        mapping={
            "complete": 1,
            "source": str(stage),
            "fingerprint": str(meta.get("fingerprint")),
            "key_scheme": KEY_SCHEME,
            "titles": n_titles,
            **{f"pairs_{k}": n for k, n in written.items()},
            # how readers break score ties: the tables' neighbour order
            **{f"id_order_{k}": m.order for k, m in id_maps.items()},
        },
    )
    client.persist(key_meta(prefix, version))
    previous = switch_current(client, prefix, version, grace_s)
    seconds = time.perf_counter() - start
    pairs = sum(written.values())
    return {
        "version": version,
        "previous": previous,
        "pairs": pairs,
        "per_kind": written,
        "titles": n_titles,
        "seconds": seconds,
        "pairs_per_s": pairs / seconds if seconds > 0 else 0.0,
        "status": "exported",
    }


def run(cfg: SwingConfig) -> dict[str, Any]:
    """Export `cfg.run_dir/similarity` to `cfg.redis_url`; prints and returns a summary."""
    stage = Path(cfg.run_dir) / "similarity"
    if not (stage / "_meta.json").is_file():
        raise DataError(f"{stage / '_meta.json'}: missing; run `dlrrec similarity swing` first")
    client = connect(cfg.redis_url)
    try:
        report = export(client, cfg.redis_prefix, stage, cfg.redis_grace_s)
    except redis.RedisError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"redis {safe_url(cfg.redis_url)}: export failed: {first}") from None
    finally:
        client.close()
    report["redis"] = safe_url(cfg.redis_url)
    report["prefix"] = cfg.redis_prefix
    print(json.dumps(report, sort_keys=True))
    return report


def main(argv: list[str] | None = None, prog: str = "dlrrec similarity export-redis") -> int:
    return run_job(prog, __doc__ or "", SwingConfig, "similarity", run, argv)


if __name__ == "__main__":
    sys.exit(main())
