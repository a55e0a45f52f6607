"""Val AUC and gAUC by slice, from sealed runs' per-row val probabilities; never reads test.

    python slices.py FEATURES DIR [A B]

FEATURES: the run's features folder (its train and val examples); DIR holds
`<variant>-s<seed>-val.parquet` (the trainer's `val_predictions.parquet`) and
`<variant>-s<seed>-report.json`. Prints each variant's val AUC / gAUC per slice, mean ±
std over seeds, then A - B (default full - dlrm_content) per slice, paired by seed
(SE = std of the differences / sqrt(n)). Run from the repository root, so that the
metrics are the trainer's own (trainer.metrics).

Slices of a val row:
- warm user: the user has a training row (15% of temporal val rows); cold: not;
- the cold users' rows by how many interactions the user had before the row (the
  causal protocol's `user_hist_n`, which the row reads): 0-9, 10-49, 50+.
"""

import glob
import json
import re
import statistics as st
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from trainer.metrics import ranking_report, summarize


def slice_masks(features: Path) -> dict[str, np.ndarray]:
    """bool [val rows] per slice name, in val's row order."""
    train_users = np.unique(pq.read_table(features / "examples" / "train", columns=["user_id"])["user_id"])
    val = pq.read_table(features / "examples" / "val", columns=["user_id", "user_hist_n"])
    warm = np.isin(val["user_id"].to_numpy(), train_users)
    n_before = raw_counts(val["user_hist_n"].to_numpy())
    return {
        "all": np.ones(len(warm), bool),
        "warm user": warm,
        "cold user": ~warm,
        "cold, 0-9 before": ~warm & (n_before <= 9),
        "cold, 10-49 before": ~warm & (n_before >= 10) & (n_before <= 49),
        "cold, 50+ before": ~warm & (n_before >= 50),
    }


def raw_counts(column: np.ndarray) -> np.ndarray:
    """`user_hist_n` back to counts: features/stats.py stores log1p(n) / 5."""
    return np.rint(np.expm1(column.astype(np.float64) * 5.0)).astype(np.int64)


def metrics(pred: dict[str, np.ndarray], mask: np.ndarray) -> tuple[float, float]:
    users, labels, probs = pred["user_id"][mask], pred["label"][mask], pred["prob"][mask]
    order = np.argsort(users, kind="stable")  # ranking_report takes whole users' rows together
    gauc = ranking_report(users[order], labels[order], probs[order])["gauc"]
    return summarize(labels, probs).auc(), gauc


def load(d: Path, masks: dict[str, np.ndarray]) -> dict[str, dict[int, dict[str, tuple[float, float]]]]:
    runs: dict[str, dict[int, dict[str, tuple[float, float]]]] = {}
    for f in sorted(glob.glob(f"{d}/*-s*-val.parquet")):
        m = re.match(r"(.+)-s(\d+)-val\.parquet", Path(f).name)
        assert m, f
        t = pq.read_table(f)
        pred = {c: t[c].to_numpy() for c in ("user_id", "label", "prob")}
        report = json.loads(Path(f.replace("-val.parquet", "-report.json")).read_text())
        assert report["test"] is None, f"{f}: a test-scored run; this analysis is val-only"
        got = {name: metrics(pred, mask) for name, mask in masks.items()}
        assert abs(got["all"][0] - report["val"]["auc"]) < 1e-9, f"{f}: not its report's val rows"
        runs.setdefault(m[1], {})[int(m[2])] = got
    return runs


def ms(xs: list[float]) -> str:
    return f"{st.mean(xs):.4f} ± {st.stdev(xs):.4f}" if len(xs) > 1 else f"{xs[0]:.4f}"


def main(features: Path, d: Path, a: str, b: str) -> None:
    masks = slice_masks(features)
    runs = load(d, masks)
    print("| variant | slice | val rows | val AUC | val gAUC | seeds |\n|---|---|---|---|---|---|")
    for v in sorted(runs):
        for name, mask in masks.items():
            per = [runs[v][s][name] for s in sorted(runs[v])]
            print(f"| {v} | {name} | {int(mask.sum())} | {ms([x[0] for x in per])} | {ms([x[1] for x in per])} | {len(per)} |")
    seeds = sorted(set(runs[a]) & set(runs[b]))
    print(f"\n| {a} - {b} | Δ val AUC | SE | Δ val gAUC | SE |\n|---|---|---|---|---|")
    for name in masks:
        cells = []
        for i in (0, 1):
            diffs = [runs[a][s][name][i] - runs[b][s][name][i] for s in seeds]
            se = st.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
            cells += [f"{st.mean(diffs):+.4f}", f"{se:.4f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"\nseeds paired: {seeds}")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(Path(args[0]), Path(args[1]), *(args[2:4] if len(args) >= 4 else ("full", "dlrm_content")))
