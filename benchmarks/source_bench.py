"""python benchmarks/source_bench.py --rows 100000 400000 1600000 [--baseline-tree DIR] [--step read] [--format csv]

Peak memory of `dlrrec features build` on a review source (the Yelp adapter, JSON Lines
with ~350-character texts; `--format csv`: the same reviews as one CSV through the
generic adapter) at several row counts and a fixed number of users and items, so what
grows is the rows only.  `--step read` runs only what the build's first step
does with the source: read and check it and hand its interactions over batch by batch
(`stage_source` and `StagedReviews.batches`; a tree without them: `read_source` and
`to_batches`, the whole table), without the MiniLM model and the later steps, whose
bucket jobs grow with the rows up to `BUCKET_ROWS` (1M) per bucket.

Each build runs as its own process (`python -m features.main`); its peak RSS is the
kernel's (wait4 ru_maxrss, via benchmarks/scale_bench.py `run_tree`).  Printed per
size: wall time and peak RSS.  With `--baseline-tree DIR` (e.g. `git archive` of an
older commit) the same builds run from that checkout too, on the same files, and
ours / baseline ratios are printed side by side.  Every build starts with an empty
embedding cache of its own (each embeds the same fixed item texts).  Never run as a test.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.ingest_bench import WORDS  # noqa: E402
from benchmarks.scale_bench import features_build, print_peak_table, run_tree  # noqa: E402


def write_yelp(folder: Path, rows: int, users: int, items: int, seed: int = 0) -> None:
    """review.json + business.json in the Yelp Open Dataset's schema, 60-word texts."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "business.json", "w") as f:
        for b in range(items):
            f.write(json.dumps({"business_id": f"b{b}", "name": f"Place {b}",
                                "categories": f"cat{b % 50}, cat{b % 7}",
                                "attributes": {"RestaurantsPriceRange2": str(1 + b % 4)}}) + "\n")  # fmt: skip
    step = 100_000
    with open(folder / "review.json", "w") as f:
        for start in range(0, rows, step):
            n = min(step, rows - start)
            user, item = rng.integers(0, users, n), rng.integers(0, items, n)
            stars, words = rng.integers(1, 6, n), rng.integers(0, len(WORDS), (n, 60))
            stamp = rng.integers(1_300_000_000, 1_600_000_000, n)
            lines = [
                json.dumps(
                    {
                        "review_id": f"r{start + i}",
                        "user_id": f"u{user[i]}",
                        "business_id": f"b{item[i]}",
                        "stars": float(stars[i]),
                        "text": " ".join(WORDS[w] for w in words[i]) + ".",
                        "date": str(np.datetime64(int(stamp[i]), "s")).replace("T", " "),
                    }
                )  # fmt: skip
                for i in range(n)
            ]
            f.write("\n".join(lines) + "\n")


CSV_COLUMNS = ["review_id", "user_id", "business_id", "stars", "text", "date"]
# The generic adapter's view of `write_csv`'s file (features/sources/generic.py).
CSV_SOURCE = {
    "source": "generic",
    "files": {"reviews": "reviews.csv"},
    "columns": {"user": "user_id", "item": "business_id", "rating": "stars",
                "timestamp": "date", "text": "text"},
}  # fmt: skip


def write_csv(folder: Path, rows: int) -> None:
    """reviews.csv: `review.json`'s reviews (already written to `folder`), as CSV."""
    with open(folder / "review.json") as f, open(folder / "reviews.csv", "w") as out:
        out.write(",".join(CSV_COLUMNS) + "\n")
        for line in f:
            r = json.loads(line)
            out.write(",".join(str(r[c]) for c in CSV_COLUMNS) + "\n")  # no commas in the texts


def source_of(fmt: str, raw: Path) -> dict:
    """The features config's source keys for the benchmark's `fmt` file."""
    return (
        {"source": "yelp", "raw_dir": str(raw)}
        if fmt == "json"
        else {**CSV_SOURCE, "raw_dir": str(raw)}
    )


def build(tree: Path, work: Path, source: dict, label: str, rows: int) -> dict:
    """One features build from checkout `tree`; its wall time and peak RSS."""

    def check(run_dir: Path) -> dict:
        meta = json.loads((run_dir / "features" / "_meta.json").read_text())
        assert sum(meta["rows"].values()) == rows
        return {}

    return features_build(tree, work, label, rows, source, check)


READ = """
import json, sys, tempfile
from pathlib import Path
import features.sources as s
src = json.loads(sys.argv[1])
raw, kw = Path(src.pop("raw_dir")), {"files": src.get("files"), "columns": src.get("columns")}
if hasattr(s, "stage_source"):
    with tempfile.TemporaryDirectory(dir=sys.argv[2]) as work:
        staged = s.stage_source(src["source"], raw, Path(work), **kw)
        rows = sum(b.num_rows for b in staged.batches())
else:
    rows = sum(b.num_rows for b in s.read_source(src["source"], raw, **kw).interactions.to_batches())
assert rows == int(sys.argv[3]), rows
print(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")))
"""


def read(tree: Path, work: Path, source: dict, label: str, rows: int) -> dict:
    """The build's source step alone from checkout `tree`; its wall time and peak RSS."""
    cmd = [sys.executable, "-c", READ, json.dumps(source), str(work), str(rows)]
    log = work / f"read-{label}-{rows}.log"
    usage = run_tree(cmd, tree, log, 1e9)
    if usage.exit_code:
        raise SystemExit(f"{label} at {rows}: exit {usage.exit_code}, see {log}")
    # VmHWM: the process's own peak; wait4's ru_maxrss also counts this process's RSS
    # (inherited through fork and exec), e.g. after `write_yelp`.
    peak_kib = int(log.read_text().split("VmHWM:")[1].split()[0])
    return {"wall_s": round(usage.wall_s, 1), "peak_gib": round(peak_kib / 2**20, 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 400_000, 1_600_000])
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--items", type=int, default=2_000)
    ap.add_argument("--baseline-tree", type=Path, default=None)
    ap.add_argument("--work", type=Path, default=Path("/tmp/source_bench"))
    ap.add_argument("--step", choices=["build", "read"], default="build")
    ap.add_argument("--format", choices=["json", "csv"], default="json")
    a = ap.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    trees = {"ours": REPO} | ({"baseline": a.baseline_tree.resolve()} if a.baseline_tree else {})
    res: dict[str, dict[int, dict]] = {label: {} for label in trees}
    for rows in a.rows:
        raw = a.work / f"yelp-{rows}-{a.users}-{a.items}"
        if not (raw / "review.json").is_file():
            write_yelp(raw, rows, a.users, a.items)
        file = raw / ("review.json" if a.format == "json" else "reviews.csv")
        if not file.is_file():
            write_csv(raw, rows)
        size = file.stat().st_size / 2**20
        for label, tree in trees.items():
            res[label][rows] = (build if a.step == "build" else read)(
                tree, a.work, source_of(a.format, raw), label, rows
            )
            print(label, rows, f"{file.name} {size:.0f} MiB", res[label][rows],
                  f"load avg {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    print_peak_table(res, a.rows, "wall s, peak GiB", "{wall_s:7.1f} {peak_gib:6.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
