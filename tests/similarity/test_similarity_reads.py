"""similarity's interaction-sized Parquet reads stream one row group at a time, with the
results (and errors) of a whole-file read."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from parquet_helpers import write_groups

from dlrrec.artifacts import SCHEMA_VERSION
from dlrrec.config import DataError
from similarity import redis_embeddings
from similarity.redis_store import key_anchor
from similarity.tables import read_positives


def write_train_parts(run: Path, label: list[np.ndarray]) -> list[Path]:
    """Features-stage train parts, one per `label` array, in row groups of at most 40."""
    train = run / "features" / "examples" / "train"
    train.mkdir(parents=True)
    rng = np.random.default_rng(0)
    paths = []
    for k, lab in enumerate(label):
        n = len(lab)
        t = pa.table(
            {
                "user_id": pa.array(rng.integers(0, 60, n), pa.int64()),
                "item_id": pa.array(rng.integers(0, 40, n), pa.int64()),
                "label": pa.array(lab, pa.float32()),
            }
        )
        sizes = [40] * (n // 40) + ([n % 40] if n % 40 else [])
        write_groups(train / f"part-{k:05d}.parquet", t, sizes)
        paths.append(train / f"part-{k:05d}.parquet")
    meta = {"schema_version": SCHEMA_VERSION, "fingerprint": "f", "n_users": 60, "n_items": 40}
    (run / "features" / "_meta.json").write_text(json.dumps(meta))
    return paths


def test_features_positives_read_as_before_one_group_at_a_time(
    tmp_path: Path, trap_whole_file_reads: Callable[[], None]
) -> None:
    rng = np.random.default_rng(1)
    paths = write_train_parts(
        tmp_path, [rng.integers(0, 2, n).astype(np.float32) for n in (130, 40, 77)]
    )
    whole = [pq.read_table(p) for p in paths]
    pos = [t.filter(pc.equal(t["label"], 1.0)) for t in whole]
    trap_whole_file_reads()
    got = read_positives(str(tmp_path), "")
    assert got.user.tolist() == np.concatenate([t["user_id"].to_numpy() for t in pos]).tolist()
    assert got.item.tolist() == np.concatenate([t["item_id"].to_numpy() for t in pos]).tolist()
    assert got.rows_read == 130 + 40 + 77
    assert (got.n_users, got.n_items, got.fingerprint) == (60, 40, "f")


def test_null_ids_of_positives_are_counted_over_the_whole_part(tmp_path: Path) -> None:
    """The one-line error counts a part's null ids over all its row groups, as before."""
    paths = write_train_parts(tmp_path, [np.ones(100, np.float32)])
    t = pq.read_table(paths[0])
    user = t["user_id"].to_pylist()
    for r in (3, 50, 99):  # in row groups 0, 1 and 2
        user[r] = None
    t = t.set_column(0, "user_id", pa.array(user, pa.int64()))
    write_groups(paths[0], t, [40, 40, 20])
    with pytest.raises(DataError, match=r"part-00000.parquet: column 'user_id' has 3 nulls$"):
        read_positives(str(tmp_path), "")


class FakePipeline:
    def __init__(self, log: list[list[tuple[str, Any]]]) -> None:
        self.ops: list[tuple[str, Any]] = []
        self.log = log

    def delete(self, key: str) -> None:
        self.ops.append(("delete", key))

    def hset(self, key: str, mapping: dict[str, bytes]) -> None:
        self.ops.append(("hset", (key, mapping)))

    def execute(self) -> None:
        self.log.append(self.ops)


class FakeRedis:
    """The pipeline calls `write_embeddings` makes, one list per MULTI/EXEC batch."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[str, Any]]] = []

    def pipeline(self, transaction: bool) -> FakePipeline:
        assert transaction
        return FakePipeline(self.batches)


def test_embeddings_written_as_before_one_group_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trap_whole_file_reads: Callable[[], None]
) -> None:
    rng = np.random.default_rng(2)
    for kind, n, sizes in (("user", 45, [20, 3, 22]), ("item", 12, [5, 7])):
        vec = rng.standard_normal((n, 3)).astype(np.float32)
        t = pa.table(
            {
                kind: pa.array([f"{kind[0]}{r}" for r in range(n)]),
                "count": pa.array(np.arange(n)),
                "vec": pa.FixedSizeListArray.from_arrays(pa.array(vec.reshape(-1)), 3),
            }
        )
        write_groups(tmp_path / f"{kind}s.parquet", t, sizes)
    monkeypatch.setattr(redis_embeddings, "BATCH_KEYS", 8)
    want: list[list[str]] = []
    vec_of: dict[str, np.ndarray] = {}
    for kind in ("user", "item"):
        t = pq.read_table(tmp_path / f"{kind}s.parquet")
        keys = [key_anchor("p", "v1", kind, i) for i in t[kind].to_pylist()]
        want += [keys[at : at + 8] for at in range(0, len(keys), 8)]
        vecs = np.stack(t["vec"].to_numpy(zero_copy_only=False)).astype("<f4")
        vec_of.update(zip(keys, vecs, strict=True))
    trap_whole_file_reads()
    client = FakeRedis()
    written = redis_embeddings.write_embeddings(client, "p", "v1", tmp_path)  # type: ignore[arg-type]
    assert written == {"user": 45, "item": 12}
    got = [[op[1][0] for op in ops if op[0] == "hset"] for ops in client.batches]
    assert got == want
    for ops in client.batches:
        assert [op[0] for op in ops] == ["delete", "hset"] * (len(ops) // 2)
        for _, (key, mapping) in (op for op in ops if op[0] == "hset"):
            assert list(mapping) == ["vec"]
            assert mapping["vec"] == vec_of[key].tobytes()


def test_pair_parts_stream_whole_anchor_runs(
    tmp_path: Path, trap_whole_file_reads: Callable[[], None]
) -> None:
    """The Redis export reads the pair tables a few rows at a time, yet every anchor's
    pairs arrive in one table (its DEL + ZADD go in one transaction), across row groups
    and part files, and nothing is lost or repeated."""
    from similarity.redis_export import _anchor_runs

    rng = np.random.default_rng(0)
    anchor = np.repeat(np.arange(40), rng.integers(1, 9, 40))
    table = pa.table({"anchor": pa.array(anchor, pa.int64()),
                      "neighbor": pa.array(rng.integers(0, 99, len(anchor)), pa.int64()),
                      "score": pa.array(rng.random(len(anchor)), pa.float32())})  # fmt: skip
    half = int(np.searchsorted(anchor, 20))  # parts cut at an anchor boundary, as SWING writes them
    parts = [tmp_path / "part-00000.parquet", tmp_path / "part-00001.parquet"]
    write_groups(parts[0], table.slice(0, half), [7, 11, half - 18])
    write_groups(parts[1], table.slice(half), [3, len(anchor) - half - 3])
    trap_whole_file_reads()
    runs = list(_anchor_runs(parts, 5))
    assert pa.concat_tables(runs).equals(table)
    firsts = [set(t["anchor"].to_pylist()) for t in runs]
    assert sum(len(f) for f in firsts) == 40  # no anchor split over two tables
    assert max(t.num_rows for t in runs) <= 5 + 8  # a batch plus at most one held-back run
