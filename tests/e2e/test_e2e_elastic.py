"""End to end: raw reviews -> features -> SWING -> sharded training, each distributed
stage under `elastic_launch` with 2 processes (torchrec's golden_training test shape)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dist_helpers import free_port
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from features.config import FeaturesConfig
from similarity.config import SwingConfig
from trainer.config import TrainConfig

GENRES = ["Action", "Comedy", "Drama", "Thriller", "Romance", "Sci-Fi"]


def write_raw_reviews(raw: Path, n_users: int = 80, n_items: int = 50, seed: int = 0) -> Path:
    """Users like items whose genre matches their taste: learnable, SWING-structured."""
    rng = np.random.default_rng(seed)
    raw.mkdir(parents=True)
    item_genre = rng.integers(0, len(GENRES), n_items)
    user_taste = rng.integers(0, len(GENRES), n_users)
    rows = []
    for u in range(n_users):
        for i in rng.choice(n_items, 25, replace=False):
            like = item_genre[i] == user_taste[u]
            rating = float(rng.choice([4, 5]) if like or rng.random() < 0.15 else rng.choice([1, 2, 3]))
            rows.append((f"u{u}", f"i{i}", rating, int(rng.integers(0, 10**6))))
    u, i, r, t = zip(*rows)
    pq.write_table(
        pa.table(
            {
                "user": pa.array(u),
                "item": pa.array(i),
                "rating": pa.array(r, pa.float32()),
                "timestamp": pa.array(t, pa.int64()),
                "text": pa.array([None] * len(u), pa.string()),
                "review_id": pa.array([f"r{k}" for k in range(len(u))]),
            }
        ),
        raw / "interactions.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "item": [f"i{k}" for k in range(n_items)],
                "title": [f"Movie {k} about {GENRES[g].lower()}" for k, g in enumerate(item_genre)],
                "categories": pa.array([[GENRES[g]] for g in item_genre], pa.list_(pa.string())),
                "year": pa.array(rng.integers(1950, 2000, n_items).astype(np.int32), pa.int32()),
            }
        ),
        raw / "items.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "user": [f"u{k}" for k in range(n_users)],
                "age": pa.array(rng.integers(15, 70, n_users).astype(np.int32), pa.int32()),
                "gender": [["M", "F"][k % 2] for k in range(n_users)],
                "occupation": [["student", "artist", "engineer"][k % 3] for k in range(n_users)],
                "zip": [f"{rng.integers(10000, 99999)}" for _ in range(n_users)],
            }
        ),
        raw / "users.parquet",
    )
    return raw


def _swing(run_dir: str) -> dict:
    from similarity.main import run

    return run(SwingConfig(run_dir=run_dir, top_k=10))


def _train(run_dir: str) -> dict:
    from trainer.main import run

    return run(TrainConfig(run_dir=run_dir, epochs=6, batch_size=64, log_every=5, eval_batch_size=256, patience=6))


def launch2(fn, *args):
    cfg = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=2,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint=f"localhost:{free_port()}",
        max_restarts=0,
        monitor_interval=1,
        start_method="spawn",
    )
    return elastic_launch(cfg, entrypoint=fn)(*args)


@pytest.mark.slow
def test_raw_reviews_to_trained_model_on_two_processes(tmp_path: Path):
    raw = write_raw_reviews(tmp_path / "raw")
    run_dir = tmp_path / "run"
    from features.main import run as build_features

    fmeta = build_features(FeaturesConfig(run_dir=str(run_dir), raw_dir=str(raw), seed=1))
    assert fmeta["rows"]["train"] + fmeta["rows"]["val"] + fmeta["rows"]["test"] == 80 * 25

    smeta = launch2(_swing, str(run_dir))[0]
    assert smeta["world_size"] == 2
    assert (run_dir / "similarity" / "_meta.json").is_file()
    item_pairs = pa.concat_tables(
        [pq.read_table(p) for p in sorted((run_dir / "similarity" / "item_item").glob("part-*.parquet"))]
    )
    assert item_pairs.num_rows > 0

    reports = launch2(_train, str(run_dir))
    r0, r1 = reports[0], reports[1]
    # gathered metrics and the plan agree on every rank (timings are each rank's own)
    for key in ("val", "test", "best_epoch", "sharding_plan", "losses"):
        assert r0[key] == r1[key], key
    report = json.loads((run_dir / "train" / "report.json").read_text())
    assert report["world_size"] == 2
    assert {r for p in report["sharding_plan"].values() for r in p["ranks"]} == {0, 1}
    for key in ("dataset", "split", "seed", "device", "best_epoch", "selection_metric", "throughput", "losses", "variant"):
        assert key in report
    assert set(report["val"]) >= {"auc", "logloss", "accuracy", "fpr", "threshold"}
    assert set(report["test"]) >= {"auc", "logloss", "accuracy", "fpr"}
    # taste-by-genre is learnable from ids, genres and the MiniLM text of the titles
    # (200 val/test rows each: the bounds leave room for that noise)
    assert report["val"]["auc"] > 0.7, report["val"]
    assert report["test"]["auc"] > 0.6, report["test"]
    assert report["losses"]["item_item"] > 0 and report["losses"]["user_user"] > 0
    best = Path(report["best_checkpoint"])
    assert best.is_dir() and (best / "trainer_state.json").is_file()
    assert json.loads((best / "trainer_state.json").read_text())["epoch"] == report["best_epoch"]
