"""python benchmarks/spill_bench.py --baseline-tree DIR [--chunks 20] [--adds 2000]

The features build's `Spill` (features/spill.py) of this checkout against another one's
(e.g. a `git archive` of da01f11, whose spill files were Parquet), each in its own
process, side by side:

- bulk: `--chunks` chunks of 262,144 random rows (6 columns) into 16 buckets, then every
  bucket read back: write and read seconds, disk MiB;
- batches: `--adds` adds of 64 one-row slices to 64 buckets (a row group or batch per
  bucket each): how much the open spill's RSS grew.

Never run as a test.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def rss_mib() -> float:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(status["VmRSS"].split()[0]) / 1024


def measure(chunks: int, adds: int, work: Path) -> dict:
    """Both measurements with the `Spill` this process imports."""
    import pyarrow as pa

    from features.spill import Spill

    rng, n = np.random.default_rng(0), 1 << 18
    spill = Spill(work / "bulk", 16)
    t0 = time.perf_counter()
    for k in range(chunks):
        cols = {"seq": np.arange(k * n, (k + 1) * n), "user": rng.integers(0, 10**6, n),
                "item": rng.integers(0, 5000, n), "label": rng.random(n) < 0.5,
                "rating": rng.integers(1, 6, n).astype(np.float32), "ts": rng.integers(0, 10**9, n)}  # fmt: skip
        spill.add(pa.table(cols), rng.integers(0, 16, n))
    spill.close()
    write_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows = sum(t.num_rows for t in (spill.read(b) for b in range(16)) if t is not None)
    read_s = time.perf_counter() - t0
    disk = sum(f.stat().st_size for f in (work / "bulk").iterdir()) / 2**20
    assert rows == chunks * n
    tiny = Spill(work / "tiny", 64)
    table = pa.table({"seq": pa.array(np.arange(64)), "id": pa.array(np.arange(64))})
    tiny.add(table, np.arange(64))
    before = rss_mib()
    for _ in range(adds):
        tiny.add(table, np.arange(64))
    grown = rss_mib() - before
    tiny.close()
    return {"write_s": write_s, "read_s": read_s, "disk_mib": disk, "batches_grown_mib": grown}


def run_tree(tree: Path, chunks: int, adds: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [sys.executable, __file__, "--measure", str(chunks), str(adds), tmp],
            cwd=tree, env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--measure":
        sys.path.insert(0, str(Path.cwd()))
        print(json.dumps(measure(int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline-tree", type=Path, required=True)
    ap.add_argument("--chunks", type=int, default=20)
    ap.add_argument("--adds", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    print(f"{'tree':9} {'write s':>8} {'read s':>7} {'disk MiB':>9} | RSS growth over {args.adds * 64:,} batches")
    for r in range(args.rounds):
        pair = {"ours": REPO, "baseline": args.baseline_tree.resolve()}
        order = list(pair.items()) if r % 2 == 0 else list(pair.items())[::-1]
        for label, tree in order:
            m = run_tree(tree, args.chunks, args.adds)
            print(f"{label:9} {m['write_s']:8.2f} {m['read_s']:7.2f} {m['disk_mib']:9.0f} | "
                  f"{m['batches_grown_mib']:.0f} MiB", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
