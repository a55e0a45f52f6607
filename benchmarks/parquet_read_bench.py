"""python benchmarks/parquet_read_bench.py [--rows 1000000 4000000 16000000] [--work DIR]

Peak RSS of reading one Parquet file batch by batch, as the `source: raw` path of
`dlrrec features build` reads its two big files, at several row counts:

    raw     interactions.parquet as benchmarks/ingest_bench.py writes it (1M-row row
            groups), the raw schema's columns, in batches of features/io.py
            SCAN_BATCH_ROWS (what `scan_batches` reads)
    index   the row index (features/rowindex.py INDEX_SCHEMA, row groups of CHUNK_ROWS),
            every column in batches of CHUNK_ROWS (what `RowIndex.chunks` reads)

each read three ways, every read in a fresh process (peak = the kernel's ru_maxrss):

    iter_batches   one `ParquetFile.iter_batches` over the whole file
    per_group      `iter_batches` over one row group at a time (dlrrec/arrow.py
                   `parquet_batches`, what the readers use)
    read_group     `ParquetFile.read_row_group`, one whole row group at a time

The files are generated once per size under --work (reused).  Printed: one table of
peak MiB per (file, size, way), and how each way's peak grows from the smallest size
to the largest.  Never run as a test.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.ingest_bench import write_synthetic  # noqa: E402
from benchmarks.scale_bench import run_tree  # noqa: E402
from features.rowindex import CHUNK_ROWS, INDEX_SCHEMA  # noqa: E402

WAYS = ("iter_batches", "per_group", "read_group")
READ = """
import sys
from pathlib import Path
import pyarrow.parquet as pq
from dlrrec.arrow import parquet_batches
path, way, batch, columns = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4].split(",")
pf = pq.ParquetFile(path)
if way == "iter_batches":
    batches = pf.iter_batches(batch_size=batch, columns=columns)
elif way == "per_group":
    batches = parquet_batches(path, columns, batch)
else:
    batches = (b for g in range(pf.num_row_groups)
               for b in pf.read_row_group(g, columns=columns).to_batches())
rows = 0
for b in batches:
    rows += b.num_rows
assert rows == pf.metadata.num_rows, rows
print(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")))
"""


def write_index(path: Path, rows: int, seed: int = 0) -> None:
    """A row index of `rows` random rows, written as `build_index` writes it."""
    rng = np.random.default_rng(seed)
    with pq.ParquetWriter(path, INDEX_SCHEMA) as w:
        for start in range(0, rows, CHUNK_ROWS):
            n = min(CHUNK_ROWS, rows - start)
            table = pa.table(
                {
                    "user": rng.integers(0, rows // 10, n),
                    "item": rng.integers(0, rows // 100, n),
                    "timestamp": rng.integers(1_200_000_000, 1_700_000_000, n),
                    "rating": rng.integers(1, 6, n).astype(np.float64),
                    "fold_hash": rng.integers(0, 2**63, n).astype(np.uint64),
                },
                schema=INDEX_SCHEMA,
            )
            w.write_table(table, row_group_size=CHUNK_ROWS)


def files(work: Path, rows: int) -> dict[str, tuple[Path, int, list[str]]]:
    """{kind: (file, batch rows, columns)} at `rows`, written when missing."""
    from features.io import SCAN_BATCH_ROWS
    from features.schema import RAW_INTERACTIONS

    raw, index = work / f"raw-{rows}", work / f"index-{rows}.parquet"
    if not (raw / "interactions.parquet").is_file():
        raw.mkdir(parents=True, exist_ok=True)
        write_synthetic(raw, rows)
    if not index.is_file():
        write_index(index, rows)
    return {
        "raw": (raw / "interactions.parquet", SCAN_BATCH_ROWS, RAW_INTERACTIONS.names),
        "index": (index, CHUNK_ROWS, INDEX_SCHEMA.names),
    }


def peak_mib(path: Path, way: str, batch: int, columns: list[str], log: Path) -> float:
    """The reading process's own high-water RSS (VmHWM: not wait4's ru_maxrss, which
    counts this process's RSS too, inherited through fork and exec)."""
    cmd = [sys.executable, "-c", READ, str(path), way, str(batch), ",".join(columns)]
    usage = run_tree(cmd, REPO, log, 1e9)
    if usage.exit_code:
        raise SystemExit(f"{path} {way}: exit {usage.exit_code}, see {log}")
    return int(log.read_text().split("VmHWM:")[1].split()[0]) / 1024


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 4_000_000, 16_000_000])
    ap.add_argument("--work", type=Path, default=Path("/tmp/parquet_read_bench"))
    a = ap.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    peak: dict[tuple[str, int, str], float] = {}
    for rows in a.rows:
        for kind, (path, batch, columns) in files(a.work, rows).items():
            groups = pq.ParquetFile(path).num_row_groups
            for way in WAYS:
                peak[kind, rows, way] = peak_mib(path, way, batch, columns, a.work / "read.log")
            print(f"{kind:5} {rows:>10,} rows, {groups:3} row groups, "
                  f"{path.stat().st_size / 2**20:6.0f} MiB: "
                  + "  ".join(f"{w} {peak[kind, rows, w]:6.0f}" for w in WAYS)
                  + f"  (load avg {os.getloadavg()[0]:.1f})", flush=True)  # fmt: skip
    print(f"\npeak RSS MiB | {' | '.join(f'{w:>12}' for w in WAYS)}")
    for kind in ("raw", "index"):
        for rows in a.rows:
            print(
                f"{kind:5} {rows:>10,} | "
                + " | ".join(f"{peak[kind, rows, w]:12.0f}" for w in WAYS)
            )
        lo, hi = a.rows[0], a.rows[-1]
        print(f"{kind:5} growth x{hi // lo:<4} | "
              + " | ".join(f"{peak[kind, hi, w] / peak[kind, lo, w]:11.2f}x" for w in WAYS))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
