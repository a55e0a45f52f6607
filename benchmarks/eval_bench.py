"""python benchmarks/eval_bench.py [--rows 1000000 4000000 16000000] [--baseline-tree DIR]

Peak memory per rank and wall time of exact split evaluation as the split grows, 2 gloo
ranks, this checkout against another (e.g. a `git archive` of f1d1363, whose every rank
all-gathered each row's id, score, label and user, then computed the metrics on whole
arrays).

Each rank makes its share of a synthetic scored split chunk by chunk (65,536 rows; users
uniform over rows / 10, labels p = 0.5, float32 scores sigmoid(normal + 1.5 label)),
so only the evaluation itself can grow with the rows. This checkout: the rows go
through `trainer.evaluation`'s spill (`Spill`) and bucket counting (`count_buckets`),
as `evaluate` does after scoring. The baseline: `gather_rows` and the whole-array
`best_accuracy_threshold`, `classification_report` and `ranking_report`, as its
`evaluate_best` did. Peak RSS is each rank's own `ru_maxrss` at the end; both print the
AUC, gAUC and threshold, which must agree. Never run as a test.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CHUNK = 1 << 16


def chunks(rank: int, world: int, n: int) -> list[tuple[int, int]]:
    per = -(-n // world)
    lo, hi = min(n, rank * per), min(n, (rank + 1) * per)
    return [(a, min(a + CHUNK, hi)) for a in range(lo, hi, CHUNK)]


def make_rows(lo: int, hi: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(lo)  # a function of the rows, not of the rank
    labels = rng.random(hi - lo) < 0.5
    users = rng.integers(0, max(1, n // 10), hi - lo)
    probs = (1 / (1 + np.exp(-(rng.normal(size=hi - lo) + 1.5 * labels)))).astype(np.float32)
    return users, labels.astype(np.float32), probs


def ours(rank: int, world: int, n: int, work: Path) -> dict:
    import torch

    from trainer.distributed import DistEnv, all_reduce_sum, barrier
    from trainer.evaluation import EvalSpec, Spill, count_buckets, user_buckets
    from trainer.metrics import pack_scores

    env = DistEnv(rank, world, 0, torch.device("cpu"), "gloo", False)
    spec = EvalSpec("val", ())
    if rank == 0:
        work.mkdir()
    barrier()
    spill = Spill(work, rank, user_buckets(n, spec), spec.flush_rows)
    for lo, hi in chunks(rank, world, n):
        users, labels, probs = make_rows(lo, hi, n)
        spill.add(users, pack_scores(labels, probs))
    spill.flush()
    ev = count_buckets(work, all_reduce_sum(spill.totals), spec, env)
    t = ev.summary.best_accuracy_threshold()
    return {"auc": ev.summary.auc(), "gauc": ev.ranking["gauc"], "threshold": t,
            "accuracy": ev.summary.report(t)["accuracy"]}  # fmt: skip


def baseline(rank: int, world: int, n: int) -> dict:
    from trainer.distributed import gather_rows
    from trainer.metrics import best_accuracy_threshold, classification_report, ranking_report  # type: ignore[attr-defined]

    parts = [(np.arange(lo, hi), *make_rows(lo, hi, n)) for lo, hi in chunks(rank, world, n)]
    ids = np.concatenate([p[0] for p in parts])
    _, users = gather_rows(ids, np.concatenate([p[1] for p in parts]))
    _, labels = gather_rows(ids, np.concatenate([p[2] for p in parts]))
    _, probs = gather_rows(ids, np.concatenate([p[3] for p in parts]))
    t = best_accuracy_threshold(labels, probs)
    report = classification_report(labels, probs, t)
    return {"auc": report["auc"], "gauc": ranking_report(users, labels, probs)["gauc"], "threshold": t,
            "accuracy": report["accuracy"]}  # fmt: skip


def rank_main(rank: int, world: int, n: int, method: str, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    if method == "ours":  # imports (torchrec's is seconds) are not the evaluation
        import trainer.evaluation  # noqa: F401
    else:
        import trainer.metrics  # noqa: F401
    dist.barrier()
    t0 = time.perf_counter()
    result = ours(rank, world, n, Path(out) / "spill") if method == "ours" else baseline(rank, world, n)
    dist.barrier()
    result["seconds"] = time.perf_counter() - t0
    result["peak_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def worker(n: int, method: str, out: str) -> None:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(rank_main, args=(2, n, method, port, out), nprocs=2)


def run(tree: Path, method: str, n: int) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="eval_bench_") as out:
        env = {**os.environ, "PYTHONPATH": str(tree)}
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", method, "--rows", str(n), "--out", out]
        subprocess.run(cmd, env=env, check=True)
        return [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(2)]


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 4_000_000, 16_000_000])
    p.add_argument("--baseline-tree", type=Path)
    p.add_argument("--worker", choices=("ours", "baseline"), help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.rows[0], args.worker, args.out)
        return 0
    trees = [("ours", REPO)] + ([("baseline", args.baseline_tree.resolve())] if args.baseline_tree else [])
    print(f"load average {os.getloadavg()[0]:.1f}; 2 gloo ranks; peak RSS per rank (GiB), wall s")
    print(f"{'rows':>11} {'tree':9} {'rank 0':>7} {'rank 1':>7} {'wall s':>7} {'auc':>8} {'gauc':>8} {'threshold':>10}")
    for n in args.rows:
        for method, tree in trees:
            r = run(tree, method, n)
            print(f"{n:11,} {method:9} {r[0]['peak_gib']:7.2f} {r[1]['peak_gib']:7.2f} "
                  f"{max(x['seconds'] for x in r):7.1f} {r[0]['auc']:8.5f} {r[0]['gauc']:8.5f} "
                  f"{r[0]['threshold']:10.6f}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
