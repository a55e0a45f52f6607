"""python benchmarks/review_content_bench.py --rows 20000 80000 [--baseline-tree DIR]

Peak memory of `dlrrec features build` with an `llm:` section (the offline provider:
extractive summaries, no network) on synthetic raw reviews with text, at several row
counts and a fixed number of users and items, so what grows is the rows only.

Each build runs as its own process (`python -m features.main`); its peak RSS is the
kernel's (wait4 ru_maxrss, via benchmarks/scale_bench.py `run_tree`).  Printed per
size: wall time, peak RSS, and the examples' bytes per row on disk.  With
`--baseline-tree DIR` (e.g. `git archive` of an older commit) the same builds run from
that checkout too, on the same data, and ours / baseline ratios are printed side by
side.  Every build starts with an empty embedding cache of its own, so each one loads
MiniLM and embeds its item texts and summaries (a build that found every vector cached
would never load the model, and its peak would not be comparable).  Never run as a test.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.scale_bench import dir_bytes, features_build, generate, print_peak_table  # noqa: E402


def build(tree: Path, work: Path, raw: Path, label: str, rows: int, folds: int) -> dict:
    """One features build from checkout `tree`; its wall time, peak RSS and bytes per row."""

    def per_row(run_dir: Path) -> dict:
        return {"examples_b_per_row": round(dir_bytes(run_dir / "features" / "examples") / rows, 1)}

    return features_build(tree, work, label, rows, {"raw_dir": str(raw), "llm": {"folds": folds}}, per_row)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[20_000, 80_000])
    ap.add_argument("--users", type=int, default=500)
    ap.add_argument("--items", type=int, default=100)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--baseline-tree", type=Path, default=None)
    ap.add_argument("--work", type=Path, default=Path("/tmp/review_content_bench"))
    a = ap.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    trees = {"ours": REPO} | ({"baseline": a.baseline_tree.resolve()} if a.baseline_tree else {})
    res: dict[str, dict[int, dict]] = {label: {} for label in trees}
    for rows in a.rows:
        raw = a.work / f"raw-{rows}-{a.users}-{a.items}"
        generate(raw, rows, a.users, a.items, seed=0)
        for label, tree in trees.items():
            res[label][rows] = build(tree, a.work, raw, label, rows, a.folds)
            print(label, rows, res[label][rows], flush=True)
    print_peak_table(res, a.rows, "wall s, peak GiB, B/row",
                     "{wall_s:7.1f} {peak_gib:6.3f} {examples_b_per_row:7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
