"""Redis holds the source's ids: features -> SWING -> export -> `neighbors`, on a tiny
dataset whose ids are non-contiguous strings (so a dense index is never a valid id).

Needs the `redis-server` binary (see tests/services.py)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from services import start_redis

from dlrrec.artifacts import hash_tree
from features.config import FeaturesConfig
from features.main import run as build_features
from features.schema import RAW_INTERACTIONS, RAW_ITEMS, RAW_USERS
from launch.cli import main as cli_main
from similarity.config import SwingConfig
from similarity.main import run as swing_run
from similarity.redis_export import export
from similarity.redis_read import read_neighbors
from similarity.redis_store import connect
from similarity.tables import read_pairs

pytestmark = pytest.mark.redis

# MovieLens-like digit ids with gaps (dense index k is never id k) and Yelp-like users.
ITEMS = ["50", "1", "181", "100", "7", "1000", "23", "9"]
TITLES = {i: f"Film {i}" for i in ITEMS if i != "23"} | {"23": None}
USERS = ["zQ-1x", "_b9", "Alice", "u42", "u7", "bob", "k_Z0", "m3", "q", "Yt8"]


def _raw(raw: Path) -> Path:
    rng = np.random.default_rng(5)
    raw.mkdir(parents=True)
    rows = []
    for u in USERS:
        for i in rng.choice(ITEMS, 5, replace=False):
            rows.append({"user": u, "item": str(i), "rating": float(rng.choice([4, 5, 5, 2])),
                         "timestamp": int(rng.integers(0, 10**6)), "text": None,
                         "review_id": f"{u}/{i}"})  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows, schema=RAW_INTERACTIONS), raw / "interactions.parquet")
    items = [{"item": i, "title": TITLES[i], "categories": ["Drama"], "year": 1990} for i in ITEMS]
    pq.write_table(pa.Table.from_pylist(items, schema=RAW_ITEMS), raw / "items.parquet")
    users = [{"user": u, "age": 30, "gender": "F", "occupation": "writer", "zip": "12345"} for u in USERS]
    pq.write_table(pa.Table.from_pylist(users, schema=RAW_USERS), raw / "users.parquet")
    return raw


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ids")
    raw = _raw(root / "raw")
    build_features(FeaturesConfig(run_dir=str(root / "run"), raw_dir=str(raw), split_fractions=[0.9, 0.05, 0.05]))
    swing_run(SwingConfig(run_dir=str(root / "run"), top_k=5, min_user_items=2))
    return root / "run"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    proc, port = start_redis(tmp_path)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


def source_pairs(run: Path, kind: str) -> dict[str, list[tuple[str, float]]]:
    """The Parquet pair table in rank order, its dense ids mapped through the entity tables."""
    entity = "item" if kind == "item_item" else "user"
    ent = pq.read_table(run / "features" / "entities" / f"{entity}s.parquet").to_pydict()
    name = dict(zip(ent[f"{entity}_id"], ent[entity]))
    t = read_pairs(run / "similarity", kind).sort_by([("anchor", "ascending"), ("rank", "ascending")])
    out: dict[str, list[tuple[str, float]]] = {}
    for a, n, s in zip(t["anchor"].to_pylist(), t["neighbor"].to_pylist(), t["score"].to_pylist()):
        out.setdefault(name[a], []).append((name[n], s))
    return out


def test_export_and_neighbors_use_the_source_ids(run_dir: Path, server: str, capsys) -> None:
    args = [f"run_dir={run_dir}", f"redis_url={server}", "redis_prefix=ids"]
    assert cli_main(["similarity", "export-redis", *args]) == 0
    client = connect(server)
    for kind, short, ids in (("item_item", "item", ITEMS), ("user_user", "user", USERS)):
        want = source_pairs(run_dir, kind)
        assert len(want) >= 3 and set(want) <= set(ids), want.keys()
        for anchor, rows in want.items():
            got = read_neighbors(client, "ids", short, anchor)
            assert [n for n, _ in got] == [n for n, _ in rows], anchor
            assert np.array_equal(np.float32([s for _, s in got]), np.float32([s for _, s in rows]))
    # The CLI: rank, source id, score and the item's title where the items table has one.
    want = source_pairs(run_dir, "item_item")
    for anchor, rows in want.items():
        capsys.readouterr()
        assert cli_main(["similarity", "neighbors", "item", anchor, *args[1:]]) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        expect = [f"{r}\t{n}\t{s:.9g}" + (f"\tFilm {n}" if TITLES[n] else "") for r, (n, s) in enumerate(rows)]
        assert lines == expect
    anchor, rows = next(iter(source_pairs(run_dir, "user_user").items()))
    assert cli_main(["similarity", "neighbors", "user", anchor, "--top", "2", *args[1:]]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == [f"{r}\t{n}\t{s:.9g}" for r, (n, s) in enumerate(rows[:2])]  # users: no titles


@pytest.mark.parametrize("kind, unknown", [("item", "2"), ("item", "0"), ("user", "alice")])
def test_unknown_id_is_one_line_and_exit_2(run_dir: Path, server: str, capsys, kind: str, unknown: str):
    args = [f"run_dir={run_dir}", f"redis_url={server}", "redis_prefix=ids"]
    assert cli_main(["similarity", "export-redis", *args]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli_main(["similarity", "neighbors", kind, unknown, *args[1:]])
    assert e.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip().splitlines() == [
        f"dlrrec similarity neighbors: error: {kind} {unknown!r}: not in the export "
        f"ids:{connect(server).get('ids:current').decode()} (an unknown id, or one without SWING neighbours)"
    ]


def test_reexport_replaces_a_dense_index_version(run_dir: Path, server: str) -> None:
    """The same tables exported before ids were mapped (key scheme 1) are not `already
    current`: a re-export writes a new version and the old one expires."""
    stage = run_dir / "similarity"
    import json

    fp = json.loads((stage / "_meta.json").read_text())["fingerprint"]
    files = sorted(stage.glob("*/part-*.parquet")) + sorted(stage.glob("ids/*.parquet"))
    old = "v" + hashlib.sha256(f"{fp}:{hash_tree(files)}".encode()).hexdigest()[:16]
    client = connect(server)
    client.set("ids:current", old)
    client.zadd("ids:versions", {old: 1.0})
    client.hset(f"ids:{old}:_meta", mapping={"complete": 1})
    client.zadd(f"ids:{old}:item_item:0", {"2": 1.0})  # index-keyed, as version 1 wrote it
    report = export(client, "ids", stage, grace_s=60)
    assert report["status"] == "exported" and report["previous"] == old and report["version"] != old
    assert 0 < client.ttl(f"ids:{old}:item_item:0") <= 60
    assert client.hget(f"ids:{report['version']}:_meta", "key_scheme") == b"2"


def test_input_table_with_string_ids(tmp_path: Path, server: str) -> None:
    """SWING's `input=` path: Yelp-like string ids, mapped back through similarity/ids/."""
    rng = np.random.default_rng(2)
    users = [f"U{k * 7 % 31}x" for k in range(25)]
    items = [f"b-{c}{k}" for k, c in enumerate("QzaKm_9dPe")]
    rows = [(u, str(i)) for u in users for i in rng.choice(items, 4, replace=False)]
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"user": [u for u, _ in rows], "item": [i for _, i in rows]}), path)
    swing_run(SwingConfig(run_dir=str(tmp_path / "run"), input=str(path), top_k=4))
    stage = tmp_path / "run" / "similarity"
    client = connect(server)
    export(client, "in", stage, grace_s=60)
    for kind, short, ids in (("item_item", "item", items), ("user_user", "user", users)):
        entity = "items" if short == "item" else "users"
        m = pq.read_table(stage / "ids" / f"{entity}.parquet").to_pydict()
        name = dict(zip(m["index"], m["id"]))
        t = read_pairs(stage, kind).to_pydict()
        want: dict[str, list[str]] = {}
        for a, n in zip(t["anchor"], t["neighbor"]):
            want.setdefault(name[a], []).append(name[n])
        assert len(want) >= 3 and set(want) <= set(ids)
        for anchor, nbs in want.items():
            assert [n for n, _ in read_neighbors(client, "in", short, anchor)] == nbs, anchor
