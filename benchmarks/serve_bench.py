"""python benchmarks/serve_bench.py [--run-dir runs/movielens-100k] [--split test] [--users 300]

The exported model (`dlrrec export`: TorchScript, no TorchRec) against the trainer's
evaluation path, in ONE process each, on the same rows of a finished run:

- scoring examples/s: the trainer's `evaluate` (a 1-rank gloo DistributedModelParallel
  with the best checkpoint loaded; batches assembled by `make_batch`; it computes each
  batch's whole training loss, InfoNCE terms included, and keeps the logits), the same
  batches through the trainer's model alone (logits only), and the export's
  `Export.logits` over the same (user row, item row) pairs, all at the run's
  `eval_batch_size`; best of `--repeats`, interleaved so load hits all; the largest
  probability difference from the export is printed too;
- recommend latency: `serve.recommend.recommend` (score the whole catalogue for one
  user, drop the user's training items, top 10) for `--users` seeded users: p50/p99 in
  ms, with and without reading the user's seen items from `seen.parquet`; wall time and
  this process's CPU time (what a call costs when the machine's other tenants load it).

Needs `dlrrec pipeline` and `dlrrec export` run on `--run-dir` first (the ML-100K demo:
1,682 items). Targets (issue 16): export >= trainer eval; recommend p99 <= 50 ms.
Never run as a test.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from serve.artifact import read_export  # noqa: E402
from serve.export import read_run  # noqa: E402
from serve.recommend import recommend, seen_items  # noqa: E402


def trainer_eval(run_dir: Path, split: str) -> tuple[Any, Any, Any, int]:
    """(the trainer's evaluate, its model's logits alone, the split, the eval batch size)
    on a 1-rank gloo DistributedModelParallel with the best checkpoint loaded."""
    from trainer.checkpoint import load_checkpoint
    from trainer.cold_start import build_cold_ids
    from trainer.data import eval_batches
    from trainer.distributed import init_distributed
    from trainer.evaluation import EvalSpec, evaluate
    from trainer.main import build_model, read_variant_data, resolve_sparse_optimizer

    _, tcfg, ckpt = read_run(run_dir)
    tcfg.run_dir = str(run_dir)
    env = init_distributed("cpu")
    data = read_variant_data(tcfg)
    ids = {f"{e}_id": np.flatnonzero(data.train_rows[e]) for e in ("user", "item")}
    cold = build_cold_ids(tcfg.id_dropout, data.sparse_names, data.sparse_vocab, ids)
    opt = resolve_sparse_optimizer(tcfg.sparse_optimizer, env.device)
    dmp, _, _ = build_model(tcfg, data, env, 1.0, opt, cold)
    load_checkpoint(ckpt, dmp, None)

    work = Path(tempfile.mkdtemp(prefix="serve_bench_"))

    def run() -> np.ndarray:
        """The trainer's evaluation (metrics included), its predictions read back."""
        spec = EvalSpec(split, predictions=work / "predictions.parquet")
        evaluate(dmp, data, spec, tcfg.eval_batch_size, env, work, cold)
        return pq.read_table(spec.predictions).column("prob").to_numpy()

    def logits_only() -> np.ndarray:
        """The same batches through the model alone: no InfoNCE terms (evaluate computes
        the whole training loss of each batch and keeps the logits)."""
        train_model = dmp.module
        out = []
        dmp.eval()
        with torch.no_grad():
            for batch, ids in eval_batches(data, split, tcfg.eval_batch_size, 0, 1):
                if cold is not None:
                    batch = cold.eval_batch(batch)
                logits, _ = train_model.model(
                    batch.dense, batch.sparse, train_model.tower_input(batch.content, batch.vectors)
                )
                out.append(torch.sigmoid(logits).numpy()[ids >= 0])
        return np.concatenate(out)

    return run, logits_only, data.read_rows(split), tcfg.eval_batch_size


def best_of(fn: Any, repeats: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def recommend_latency(
    exp: Any, users: np.ndarray, with_seen: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Per user: (wall ms, this process's CPU ms). CPU time is what the call costs this
    process whatever other tenants of the machine do; wall time adds their load."""
    items = np.arange(exp.items.num_rows, dtype=np.int64)
    seen = {int(u): seen_items(exp, int(u)) for u in users}
    wall, cpu = [], []
    for u in users:
        t0, c0 = time.perf_counter(), time.process_time()
        exclude = seen_items(exp, int(u)) if with_seen else seen[int(u)]
        recommend(exp, int(u), items, 10, exclude)
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return np.array(wall), np.array(cpu)


def scoring_table(run_dir: Path, exp: Any, split_name: str, repeats: int) -> None:
    trainer, logits_only, split, batch = trainer_eval(run_dir, split_name)
    users, items = split.user_id, split.item_id

    def exported() -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-exp.logits(users, items, batch).astype(np.float64)))

    cases = {"trainer evaluate (DMP)": trainer, "trainer model, logits only": logits_only,
             "export (TorchScript)": exported}  # fmt: skip
    best = {k: float("inf") for k in cases}
    probs: dict[str, Any] = {}
    for _ in range(repeats):  # interleaved, so load changes hit every case
        for name, fn in cases.items():
            dt, probs[name] = best_of(fn, 1)
            best[name] = min(best[name], dt)
    n, base = split.n, best["trainer evaluate (DMP)"]
    print(f"threads {torch.get_num_threads()}  load average {os.getloadavg()[0]:.2f}  "
          f"rows {n} ({split_name})  batch {batch}")  # fmt: skip
    print(
        f"{'scoring, one process':30s} {'examples/s':>12s} {'vs evaluate':>12s} {'max |p - export p|':>20s}"
    )
    for name in cases:
        diff = float(
            np.abs(np.asarray(probs[name]) - np.asarray(probs["export (TorchScript)"])).max()
        )
        print(f"{name:30s} {n / best[name]:12.0f} {base / best[name]:11.2f}x {diff:20.2e}")


def recommend_table(exp: Any, n_users: int) -> None:
    rng = np.random.default_rng(0)
    sample = rng.choice(exp.users.num_rows, min(n_users, exp.users.num_rows), replace=False)
    recommend_latency(exp, sample[:20], True)  # warm-up
    print(f"recommend over {exp.items.num_rows} items, top 10, {sample.size} users  "
          f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    print(f"  {'':28s} {'wall p50':>9s} {'wall p99':>9s} {'cpu p50':>9s} {'cpu p99':>9s}  (ms)")
    for label, with_seen in (("model + top-k", False), ("+ seen.parquet read", True)):
        wall, cpu = recommend_latency(exp, sample, with_seen)
        cells = " ".join(f"{np.percentile(x, q):9.2f}" for x in (wall, cpu) for q in (50, 99))
        print(f"  {label:28s} {cells}")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--run-dir", default="runs/movielens-100k")
    p.add_argument("--split", default="test")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--users", type=int, default=300)
    p.add_argument("--recommend-only", action="store_true", help="skip the scoring comparison")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    exp = read_export(Path(args.run_dir))
    if not args.recommend_only:
        scoring_table(Path(args.run_dir), exp, args.split, args.repeats)
    recommend_table(exp, args.users)


if __name__ == "__main__":
    main()
