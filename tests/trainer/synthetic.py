"""A tiny run root in the features/similarity artifact layout, for trainer tests.

The labels follow a planted low-rank user x item preference plus a content signal,
so a model that learns should beat AUC 0.5 by a wide margin.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

C = 384


def _vec_col(x: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(x.astype(np.float16).reshape(-1)), C)


def make_run(root: Path, n_users: int = 60, n_items: int = 40, n_rows: int = 3000, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    u_f = rng.normal(size=(n_users, 4))
    i_f = rng.normal(size=(n_items, 4))
    item_vec = np.concatenate([i_f, rng.normal(size=(n_items, C - 4)) * 0.1], 1)
    item_vec /= np.linalg.norm(item_vec, axis=1, keepdims=True)
    users = rng.integers(0, n_users, n_rows)
    items = rng.integers(0, n_items, n_rows)
    score = (u_f[users] * i_f[items]).sum(1) + rng.normal(scale=0.5, size=n_rows)
    label = (score > 0).astype(np.float32)
    cats = [rng.choice(5, size=rng.integers(0, 3), replace=False) + 1 for _ in range(n_items)]
    split = rng.choice(3, size=n_rows, p=[0.8, 0.1, 0.1])
    feats = root / "features"
    # user profile: mean of positive train items' vectors (not leakage-exact; fine for trainer tests)
    prof = np.zeros((n_users, C))
    cnt = np.zeros(n_users)
    tr = split == 0
    np.add.at(prof, users[tr & (label > 0)], item_vec[items[tr & (label > 0)]])
    np.add.at(cnt, users[tr & (label > 0)], 1)
    prof = prof / np.maximum(cnt, 1)[:, None]
    for s, name in enumerate(["train", "val", "test"]):
        m = split == s
        d = feats / "examples" / name
        d.mkdir(parents=True)
        t = pa.table(
            {
                "user_id": pa.array(users[m], pa.int64()),
                "item_id": pa.array(items[m], pa.int64()),
                "label": pa.array(label[m], pa.float32()),
                "timestamp": pa.array(np.arange(m.sum()), pa.int64()),
                "categories": pa.array([cats[i].tolist() for i in items[m]], pa.list_(pa.int64())),
                "gender": pa.array(users[m] % 2 + 1, pa.int64()),
                "year": pa.array(rng.normal(size=m.sum()), pa.float32()),
                "age": pa.array(rng.normal(size=m.sum()), pa.float32()),
                "user_text": _vec_col(prof[users[m]]),
            }
        )
        pq.write_table(t, d / "part-00000.parquet")
    ent = feats / "entities"
    ent.mkdir(parents=True)
    pq.write_table(
        pa.table({"item_id": pa.array(np.arange(n_items), pa.int64()), "item_text": _vec_col(item_vec)}),
        ent / "items.parquet",
    )
    pq.write_table(
        pa.table({"user_id": pa.array(np.arange(n_users), pa.int64()), "user_text": _vec_col(prof)}),
        ent / "users.parquet",
    )
    meta = {
        "schema_version": 1,
        "fingerprint": f"synthetic-{seed}",
        "dataset": "synthetic",
        "split": "random",
        "n_users": n_users,
        "n_items": n_items,
        "sparse_features": {
            "user_id": {"vocab_size": n_users, "multi_valued": False, "max_len": 1},
            "item_id": {"vocab_size": n_items, "multi_valued": False, "max_len": 1},
            "categories": {"vocab_size": 6, "multi_valued": True, "max_len": 2},
            "gender": {"vocab_size": 3, "multi_valued": False, "max_len": 1},
        },
        "dense_features": ["year", "age"],
        "content": {"user": ["user_text"], "item": ["item_text"]},
        "content_dim": C,
    }
    (feats / "_meta.json").write_text(json.dumps(meta))
    refresh_counts(root)
    # SWING-like neighbours from the planted factors
    sim = root / "similarity"
    for kind, f in (("item_item", i_f), ("user_user", u_f)):
        s = f @ f.T
        np.fill_diagonal(s, -np.inf)
        k = 5
        nb = np.argsort(-s, axis=1)[:, :k]
        anchors = np.repeat(np.arange(len(f)), k)
        sc = np.take_along_axis(s, nb, 1).reshape(-1)
        d = sim / kind
        d.mkdir(parents=True)
        pq.write_table(
            pa.table(
                {
                    "anchor": pa.array(anchors, pa.int64()),
                    "neighbor": pa.array(nb.reshape(-1), pa.int64()),
                    "score": pa.array(np.maximum(sc, 0.01), pa.float32()),
                    "rank": pa.array(np.tile(np.arange(k), len(f)), pa.int16()),
                }
            ),
            d / "part-00000.parquet",
        )
    sim_meta = {"schema_version": 1, "fingerprint": "synthetic", "input": {"fingerprint": meta["fingerprint"]}}
    (sim / "_meta.json").write_text(json.dumps(sim_meta))
    return root


def refresh_counts(root: Path) -> None:
    """Rewrite what the features stage counts over all rows (per-entity training rows,
    rows and positives per split, the training ratings' mean and std) from the parts,
    after a test built or edited them by hand."""
    from features.build import train_rating
    from features.io import write_train_counts

    feats = root / "features"
    meta = json.loads((feats / "_meta.json").read_text())
    tables = {s: pq.read_table(feats / "examples" / s) for s in ("train", "val", "test")}
    meta["rows"] = {s: t.num_rows for s, t in tables.items()}
    meta["positives"] = {s: int(t["label"].to_numpy().sum()) for s, t in tables.items()}
    train = tables["train"]
    if "rating" in train.column_names:
        r = train["rating"].to_numpy().astype(np.float64)
        meta["train_rating"] = train_rating(len(r), r.sum(), np.dot(r, r))
    (feats / "_meta.json").write_text(json.dumps(meta))
    users, items = (train[c].to_numpy() for c in ("user_id", "item_id"))
    write_train_counts(
        feats, np.bincount(users, minlength=meta["n_users"]), np.bincount(items, minlength=meta["n_items"])
    )


def copy_inputs(src: Path, dst: Path) -> str:
    """A fresh run root at `dst` with `src`'s features/ and similarity/ (no train/)."""
    import shutil

    for stage in ("features", "similarity"):
        shutil.copytree(src / stage, dst / stage)
    return str(dst)


def train_runs(rank: int, runs: list[tuple[str, dict]]) -> list[dict]:
    """Several `trainer.main.run()`s on one rank, in one process group, like back-to-back
    launches; for `dist_helpers.run_ranks`."""
    import torch.distributed as dist
    from dist_helpers import init_group

    from trainer.config import TrainConfig
    from trainer.main import run

    init_group(runs[0][1].get("device", "cpu"))  # nccl for device=cuda runs
    try:
        return [run(TrainConfig(run_dir=d, **o)) for d, o in runs]
    finally:
        dist.destroy_process_group()
