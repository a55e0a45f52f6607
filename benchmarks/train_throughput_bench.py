"""python benchmarks/train_throughput_bench.py --run old=TREE,RUN --run main=TREE,RUN --run ours=.,RUN

2-rank training throughput of several checkouts, side by side, in one session.

Each `--run LABEL=TREE,RUN` names a checkout (e.g. a `git archive` of an older commit)
and a run directory that holds a features + SWING artifact that checkout can read
(`benchmarks/scale_bench.py --stages features,swing --keep` builds one per checkout).
Every round trains each checkout once, as `benchmarks/scale_bench.py`'s training stage
does: `torchrun --standalone --nproc_per_node 2 -m trainer.main`, one epoch capped at
--steps global batches of --batch-size, then val selection and test scoring, in a fresh
run directory whose features/ and similarity/ are hard links to the artifact. The
figure is the trainer's own `train_examples_per_s` (report.json: training steps only,
validation and checkpoints excluded), beside its largest rank's peak RSS. Rounds
rotate the order of the checkouts, so a change in the machine's load hits each of them
alike; the table prints every round, the median and the ratio of each median to the
first checkout's. This is a shared machine: compare only figures of one invocation. Never run as a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_bench import load, run_tree, stage_cmd, tree_version  # noqa: E402


def parse_run(spec: str) -> tuple[str, Path, Path]:
    """LABEL=TREE,RUN -> (label, checkout, artifact run dir)."""
    label, _, rest = spec.partition("=")
    tree, _, run = rest.partition(",")
    if not (label and tree and run):
        raise SystemExit(f"--run: expected LABEL=TREE,RUN_DIR, got {spec!r}")
    return label, Path(tree).resolve(), Path(run).resolve()


def fresh_run(work: Path, label: str, artifact: Path, steps: int, batch_size: int) -> Path:
    """A new run dir with hard links to the artifact's features/ and similarity/."""
    run = work / f"train-{label}"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    for part in ("features", "similarity"):
        shutil.copytree(artifact / part, run / part, copy_function=os.link)
    cfg = {"run_dir": str(run), "seed": 0, "train": {
        "epochs": 1, "batch_size": batch_size, "max_steps_per_epoch": steps,
        "tensorboard": False, "progress_bar": False, "keep_checkpoints": 1}}  # fmt: skip
    (run / "config.yaml").write_text(json.dumps(cfg, indent=1))  # JSON is YAML
    return run


def train_once(
    work: Path, label: str, tree: Path, artifact: Path, args: argparse.Namespace
) -> tuple[float, float]:
    """One 2-rank training run of `tree`: its train examples/s and its largest rank's peak RSS (GiB)."""
    run = fresh_run(work, label, artifact, args.steps, args.batch_size)
    print(f"[{label}] training ({load()})", flush=True)
    usage = run_tree(stage_cmd("train", run / "config.yaml"), tree, run / "train.log", args.rss_limit_gib)
    if usage.exit_code or usage.killed:
        raise SystemExit(f"[{label}] failed (exit {usage.exit_code}) {usage.killed}: see {run / 'train.log'}")
    rate = float(json.loads((run / "train" / "report.json").read_text())["throughput"]["train_examples_per_s"])
    peak = max(v for k, v in usage.peak_by_role.items() if k != "launcher")
    print(f"[{label}] {rate:,.0f} train examples/s; peak RSS per rank {peak:.2f} GiB; "
          f"stage wall {usage.wall_s:.0f} s", flush=True)  # fmt: skip
    shutil.rmtree(run / "train" / "checkpoints", ignore_errors=True)
    return rate, peak


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--run", action="append", required=True, help="LABEL=TREE,RUN_DIR (repeat)")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--work", type=Path, default=Path("/tmp/train_throughput_bench"))
    p.add_argument("--rss-limit-gib", type=float, default=13.5)
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args(argv)
    runs = [parse_run(s) for s in args.run]
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    rates: dict[str, list[float]] = {label: [] for label, _, _ in runs}
    peaks: dict[str, list[float]] = {label: [] for label, _, _ in runs}
    for r in range(args.rounds):
        for label, tree, artifact in runs[r % len(runs) :] + runs[: r % len(runs)]:
            rate, peak = train_once(work, label, tree, artifact, args)
            rates[label].append(rate)
            peaks[label].append(peak)
    base = statistics.median(rates[runs[0][0]])
    print(f"\n2 ranks, {args.steps} steps of {args.batch_size}; train examples/s per round, median, ratio to {runs[0][0]}")
    for label, tree, _ in runs:
        med = statistics.median(rates[label])
        rounds = " ".join(f"{x:7,.0f}" for x in rates[label])
        print(f"{label:10} {rounds}  median {med:7,.0f}  {med / base:5.2f}x  "
              f"peak/rank {max(peaks[label]):.2f} GiB  ({tree}, {tree_version(tree)})")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "rates": rates, "peak_rank_gib": peaks, "load": os.getloadavg()}, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
