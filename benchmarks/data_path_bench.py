"""python benchmarks/data_path_bench.py [--rows 1000000 4000000] [--steps 300] [--world 2]

The trainer's data path at scale, per rank, without the model: seeded synthetic
examples of ML-100K's shape (user/item ids from power laws, categories, gender, two
dense features, rating; no per-row vectors) are written as a features folder
(`features.io.write_examples`: 1M-row parts in 8192-row groups, per-entity counts),
then, for each size, two fresh processes act as rank 0 of `--world` ranks:

    stream    `trainer.data.train_batches`: reads only its own lanes' blocks, a
              background thread builds its local batches (this branch)
    read-all  what every rank did before: the whole train split read into arrays
              (`TrainingData.read_rows`), before any batch is built

Each reports its peak RSS; `stream` also its local batches per second over `--steps`
steps (batch building only, no model). The ratio column is read-all / stream.
Wall clock on whatever else the machine is doing (the load average is printed).
Never run as a test.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dlrrec.artifacts import SCHEMA_VERSION  # noqa: E402
from features.io import write_examples, write_train_counts  # noqa: E402
from trainer.data import read_training_data, train_batches  # noqa: E402

N_USERS, N_ITEMS = 400_000, 5_000


def power_law(n: int, size: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
    cdf = np.cumsum((np.arange(size) + 1.0) ** -alpha)
    return rng.permutation(size)[np.minimum(np.searchsorted(cdf, rng.random(n) * cdf[-1]), size - 1)]


def write_features(root: Path, n_rows: int, seed: int = 0) -> None:
    """A features folder of `n_rows` training rows (val/test: 1000 rows each)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_rows), ("val", 1000), ("test", 1000)):
        users, items = power_law(n, N_USERS, 0.8, rng), power_law(n, N_ITEMS, 1.0, rng)
        rating = rng.integers(1, 6, n).astype(np.float32)
        cats = pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * 2), pa.array(rng.integers(1, 20, 2 * n)))
        table = pa.table({
            "user_id": users, "item_id": items, "label": (rating >= 4).astype(np.float32), "rating": rating,
            "categories": cats, "gender": rng.integers(1, 3, n), "year": rng.normal(size=n).astype(np.float32),
            "age": rng.normal(size=n).astype(np.float32),
        })  # fmt: skip
        write_examples(root, split, table)
        if split == "train":
            write_train_counts(root, np.bincount(users, minlength=N_USERS), np.bincount(items, minlength=N_ITEMS))
    (root / "entities").mkdir()
    for e in ("users", "items"):
        (root / "entities" / f"{e}.parquet").touch()
    meta = {
        "schema_version": SCHEMA_VERSION, "n_users": N_USERS, "n_items": N_ITEMS, "content_dim": 384, "content": {"user": [], "item": []},
        "dense_features": ["year", "age"],
        "sparse_features": {
            "user_id": {"vocab_size": N_USERS, "multi_valued": False},
            "item_id": {"vocab_size": N_ITEMS, "multi_valued": False},
            "categories": {"vocab_size": 20, "multi_valued": True}, "gender": {"vocab_size": 3, "multi_valued": False},
        },
    }  # fmt: skip
    (root / "_meta.json").write_text(json.dumps(meta))


def peak_rss_gib() -> float:
    """This process's peak RSS: VmHWM belongs to the exec'd image, whereas ru_maxrss
    starts from the forking parent's (which wrote the data)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def child(mode: str, run: Path, steps: int, world: int) -> dict[str, float]:
    data = read_training_data(run, [], contrastive=False)
    if mode == "read-all":
        rows = data.read_rows("train").n
        return {"peak_rss_gib": peak_rss_gib(), "rows": rows}
    t0 = time.perf_counter()
    n = sum(1 for _ in train_batches(data, 1024, 0, world, 0, 0, False, steps))
    return {"peak_rss_gib": peak_rss_gib(), "batches_per_s": n / (time.perf_counter() - t0)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 4_000_000])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child[0], Path(a.child[1]), a.steps, a.world)))
        return
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    print(f"load average {os.getloadavg()[0]:.1f}; rank 0 of {a.world}, local batch {1024 // a.world}")
    print(f"{'rows':>10} {'stream RSS':>11} {'read-all RSS':>13} {'ratio':>6} {'stream batches/s':>17}")
    for n in a.rows:
        tmp = Path(tempfile.mkdtemp(prefix="data_path_bench_"))
        try:
            write_features(tmp / "features", n)
            out = {}
            for mode in ("stream", "read-all"):
                cmd = [sys.executable, __file__, "--child", mode, str(tmp), "--steps", str(a.steps), "--world", str(a.world)]
                res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
                out[mode] = json.loads(res.stdout.strip().splitlines()[-1])
            s, r = out["stream"], out["read-all"]
            print(f"{n:>10,} {s['peak_rss_gib']:>9.2f} G {r['peak_rss_gib']:>11.2f} G "
                  f"{r['peak_rss_gib'] / s['peak_rss_gib']:>5.1f}x {s['batches_per_s']:>17.1f}")  # fmt: skip
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
