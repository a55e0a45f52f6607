"""The `dlrrec similarity swing` job: inputs, tables, _meta.json, reuse and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from dlrrec.artifacts import SCHEMA_VERSION
from dlrrec.meta import SimilarityInputMeta, SimilarityMeta, SimilarityTableMeta
from launch.cli import main as cli_main
from similarity.config import SwingConfig
from similarity.main import main, run
from similarity.reference import reference_caps, reference_swing, reference_top_k, transpose
from similarity.tables import read_pairs


def random_pairs(seed: int, n: int = 2500, users: int = 150, items: int = 90) -> np.ndarray:
    rng = np.random.default_rng(seed)
    u = rng.integers(0, users, n)
    i = np.minimum(rng.zipf(1.4, n) - 1, items - 1)
    return np.stack([u, i], axis=1)


def write_features(run_dir: Path, pairs: np.ndarray, n_users: int, n_items: int) -> None:
    """A minimal features-stage output: train parts with positives and negatives."""
    stage = run_dir / "features"
    train = stage / "examples" / "train"
    train.mkdir(parents=True)
    rng = np.random.default_rng(0)
    label = np.ones(len(pairs), dtype=np.float32)
    neg_u = rng.integers(0, n_users, 400)
    neg_i = rng.integers(0, n_items, 400)
    user = np.concatenate([pairs[:, 0], neg_u])
    item = np.concatenate([pairs[:, 1], neg_i])
    label = np.concatenate([label, np.zeros(400, np.float32)])
    half = len(user) // 2
    for k, sl in enumerate([slice(0, half), slice(half, None)]):
        t = pa.table(
            {
                "user_id": pa.array(user[sl], pa.int64()),
                "item_id": pa.array(item[sl], pa.int64()),
                "label": pa.array(label[sl], pa.float32()),
                "year": pa.array(np.full(len(user[sl]), 1999.0, np.float32)),
            }
        )
        pq.write_table(t, train / f"part-{k:05d}.parquet")
    meta = {
        "schema_version": SCHEMA_VERSION,
        "fingerprint": "features-abc",
        "n_users": n_users,
        "n_items": n_items,
    }
    (stage / "_meta.json").write_text(json.dumps(meta))


def table_rows(stage: Path, kind: str) -> list[tuple[int, int, float, int]]:
    t = read_pairs(stage, kind)
    return list(
        zip(
            t["anchor"].to_pylist(),
            t["neighbor"].to_pylist(),
            t["score"].to_pylist(),
            t["rank"].to_pylist(),
        )
    )


def test_features_input_matches_reference(tmp_path: Path) -> None:
    pairs = random_pairs(0)
    write_features(tmp_path, pairs, 150, 90)
    cfg = SwingConfig(run_dir=str(tmp_path), top_k=7, max_users_per_item=20, seed=3)
    meta = run(cfg)
    stage = tmp_path / "similarity"
    graph = reference_caps(map(tuple, pairs.tolist()), 2, 1000, 20, 3)
    ii = reference_swing(graph, 15.0, 0.0, 0.3)
    uu = reference_swing(transpose(graph), 15.0, 0.0, 0.3)
    assert table_rows(stage, "item_item") == reference_top_k(ii, 7)
    assert table_rows(stage, "user_user") == reference_top_k(uu, 7)

    on_disk = json.loads((stage / "_meta.json").read_text())
    assert on_disk == json.loads(json.dumps(meta))
    assert meta["schema_version"] == SCHEMA_VERSION
    assert meta["world_size"] == 1
    assert meta["params"]["top_k"] == 7
    assert meta["item_item"]["pairs"] == len(reference_top_k(ii, 7))
    assert meta["item_item"]["anchors"] == 90
    assert meta["item_item"]["coverage"] == pytest.approx(len({a for a, _ in ii}) / 90)
    assert meta["user_user"]["coverage"] == pytest.approx(len({a for a, _ in uu}) / 150)
    assert meta["item_item"]["W"] == meta["user_user"]["W"] > 0
    assert meta["graph"]["positives"] == len(pairs)
    t = pq.read_table(next((stage / "item_item").glob("part-*.parquet")))
    assert [str(f.type) for f in t.schema] == ["int64", "int64", "float", "int16"]
    assert not list(tmp_path.glob(".similarity*"))  # no temp folder left behind


def test_reuse_same_fingerprint(tmp_path: Path) -> None:
    write_features(tmp_path, random_pairs(1, 800), 150, 90)
    first = run(SwingConfig(run_dir=str(tmp_path)))
    # Same config (memory budget and Redis keys do not count): reused, not recomputed.
    again = run(SwingConfig(run_dir=str(tmp_path), memory_budget_gb=0.01, redis_url="redis://x"))
    assert again == json.loads(json.dumps(first))


def test_refuse_then_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_features(tmp_path, random_pairs(1, 800), 150, 90)
    run(SwingConfig(run_dir=str(tmp_path)))
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main([f"run_dir={tmp_path}", "top_k=3"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "overwrite=true" in err
    assert main([f"run_dir={tmp_path}", "top_k=3", "overwrite=true"]) == 0
    assert json.loads((tmp_path / "similarity" / "_meta.json").read_text())["params"]["top_k"] == 3


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_plain_input_integer_ids(tmp_path: Path, fmt: str) -> None:
    pairs = random_pairs(2, 1500)
    # Sparse, large original ids: the tables must carry them, not dense indices.
    user = pairs[:, 0] * 1000 + 17
    item = pairs[:, 1] * 7 + 1_000_000_000_000
    path = tmp_path / f"interactions.{fmt}"
    t = pa.table({"user": user, "item": item, "ts": np.arange(len(user))})
    if fmt == "parquet":
        pq.write_table(t, path)
    else:
        pacsv.write_csv(t, path)
    meta = run(SwingConfig(run_dir=str(tmp_path / "run"), input=str(path), top_k=4))
    graph = reference_caps(zip(user.tolist(), item.tolist()), 2, 1000, 1000, 0)
    stage = tmp_path / "run" / "similarity"
    assert table_rows(stage, "item_item") == reference_top_k(reference_swing(graph, 15, 0, 0.3), 4)
    assert meta["ids"] == {"user": "original", "item": "original"}
    assert meta["input"]["source"] == str(path)
    # the record is the typed schema the readers use (dlrrec/meta.py), key for key
    assert set(meta) == set(SimilarityMeta.__required_keys__ | SimilarityMeta.__optional_keys__)
    assert set(meta["item_item"]) == set(SimilarityTableMeta.__required_keys__)
    assert set(meta["input"]) == set(SimilarityInputMeta.__required_keys__)


def test_plain_input_string_ids(tmp_path: Path) -> None:
    pairs = random_pairs(3, 1200)
    path = tmp_path / "interactions.parquet"
    users = np.array([f"u{x}" for x in pairs[:, 0]])
    items = np.array([f"item-{x:03d}" for x in pairs[:, 1]])
    pq.write_table(pa.table({"user": users, "item": items}), path)
    meta = run(SwingConfig(run_dir=str(tmp_path / "run"), input=str(path), top_k=5))
    stage = tmp_path / "run" / "similarity"
    ids = pq.read_table(stage / "ids" / "items.parquet")
    names = dict(zip(ids["index"].to_pylist(), ids["id"].to_pylist()))
    by_name = reference_caps(zip(users.tolist(), items.tolist()), 2, 1000, 1000, 0)
    # The reference runs on the same dense indices (sorted distinct ids).
    index_of_user = {u: k for k, u in enumerate(sorted(by_name.keys() | set(users.tolist())))}
    index_of_item = {v: k for k, v in names.items()}
    graph = {index_of_user[u]: {index_of_item[i] for i in s} for u, s in by_name.items()}
    assert table_rows(stage, "item_item") == reference_top_k(reference_swing(graph, 15, 0, 0.3), 5)
    assert meta["ids"]["item"].startswith("index")
    assert set(names.values()) == set(items.tolist())


def bad(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as e:
        cli_main(["similarity", "swing", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("dlrrec similarity swing: error:")
    return err


def test_bad_inputs_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.parquet"
    pq.write_table(
        pa.table({"user": pa.array([], pa.int64()), "item": pa.array([], pa.int64())}), empty
    )
    assert "no interactions" in bad([f"run_dir={tmp_path}", f"input={empty}"], capsys)

    cols = tmp_path / "cols.csv"
    cols.write_text("uid,iid\n1,2\n")
    assert "missing column 'user'" in bad([f"run_dir={tmp_path}", f"input={cols}"], capsys)

    assert "top_k" in bad([f"run_dir={tmp_path}", f"input={cols}", "top_k=0"], capsys)
    assert "top_k" in bad([f"run_dir={tmp_path}", f"input={cols}", "top_k=-3"], capsys)
    assert "unknown key 'topk'" in bad([f"run_dir={tmp_path}", "topk=3"], capsys)
    assert "no such file" in bad([f"run_dir={tmp_path}", "input=/nonexistent.csv"], capsys)
    # No features stage yet.
    assert "features" in bad([f"run_dir={tmp_path / 'fresh'}"], capsys)

    # Features output without positives / with a wrong column.
    write_features(tmp_path / "r", np.zeros((0, 2), np.int64), 10, 10)
    assert "no training positives" in bad([f"run_dir={tmp_path / 'r'}"], capsys)
    part = tmp_path / "r" / "features" / "examples" / "train" / "part-00000.parquet"
    pq.write_table(pa.table({"user": [1], "item_id": [1], "label": [1.0]}), part)
    assert "missing column 'user_id'" in bad([f"run_dir={tmp_path / 'r'}"], capsys)


def test_memory_budget_changes_blocks_not_bytes(tmp_path: Path) -> None:
    """A tiny budget means many small blocks and pair chunks; the files stay the same."""
    pairs = random_pairs(4, 4000, users=300, items=200)
    path = tmp_path / "interactions.parquet"
    pq.write_table(pa.table({"user": pairs[:, 0], "item": pairs[:, 1]}), path)
    outs = []
    for k, (budget, kernel) in enumerate([(1.0, "auto"), (1e-4, "numpy"), (1e-4, "auto")]):
        cfg = SwingConfig(
            run_dir=str(tmp_path / f"r{k}"), input=str(path), memory_budget_gb=budget, kernel=kernel
        )
        run(cfg)
        stage = tmp_path / f"r{k}" / "similarity"
        outs.append({p.relative_to(stage): p.read_bytes() for p in stage.rglob("part-*.parquet")})
    assert outs[0] == outs[1] == outs[2]
