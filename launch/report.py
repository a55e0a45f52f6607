"""Print a run's metrics table: `dlrrec report runs/movielens-100k`."""

from __future__ import annotations

import sys
from pathlib import Path

from dlrrec.entry import ArgParser, user_errors
from dlrrec.meta import TrainReport, read_train_report


def read_report(run_dir: str | Path) -> TrainReport:
    return read_train_report(Path(run_dir) / "train" / "report.json")


def format_report(report: TrainReport, timings: dict[str, float] | None = None) -> str:
    """A plain-text table of the val/test metrics and run facts."""
    v, t = report["val"], report.get("test")
    rows = [("metric", "val", "test")]
    for key in ("auc", "logloss", "accuracy", "fpr", "gauc", "ndcg@10", "recall@10"):
        if key in v:  # reports older than the per-user metrics lack the last three
            rows.append((key, f"{v[key]:.4f}", "sealed" if t is None else f"{t[key]:.4f}"))
    rows.append(("rows", str(v.get("n", "")), "sealed" if t is None else str(t.get("n", ""))))
    w0 = max(len(r[0]) for r in rows)
    lines = [f"{a:<{w0}}  {b:>8}  {c:>8}" for a, b, c in rows]
    lines.insert(1, "-" * (w0 + 20))
    if t is None:
        lines.append("test sealed (train.score_test=false): no test figure was computed")
    var = report.get("variant", {})
    plan = report.get("sharding_plan", {})
    ranks = sorted({r for p in plan.values() for r in p.get("ranks", [])})
    facts = [
        f"dataset {report.get('dataset')}  split {report.get('split')}  seed {report.get('seed')}",
        f"world_size {report.get('world_size')}  device {report.get('device')}  "
        f"tables on ranks {ranks}  sparse optimizer {report.get('sparse_optimizer')}",
        f"variant {var.get('projection')} contrastive={var.get('contrastive')} modalities={var.get('modalities')}",
        f"best epoch {report.get('best_epoch')} by {report.get('selection_metric')}  "
        f"threshold {v.get('threshold', float('nan')):.4f} (chosen on val)",
        f"train throughput {report.get('throughput', {}).get('train_examples_per_s', 0):.0f} examples/s",
    ]
    if timings:
        facts.append("stage seconds " + "  ".join(f"{k} {s:.1f}" for k, s in timings.items()))
    return "\n".join(lines + [""] + facts)


def main(argv: list[str] | None = None, prog: str = "dlrrec report") -> int:
    p = ArgParser(prog=prog, description=(__doc__ or "").splitlines()[0])
    p.add_argument("run_dir", help="a run root whose train/report.json exists")
    args = p.parse_args(argv)
    with user_errors(prog):
        print(format_report(read_report(args.run_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
