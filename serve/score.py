"""Score (user, item) pairs: `dlrrec score --config configs/movielens-100k.yaml input=PAIRS output=OUT`.

PAIRS is a .parquet or .csv file with source ids in `user` and `item` (any other
columns, e.g. `label` or `rating`, are copied through). OUT (.parquet or .csv) gets
every input column plus `score`, the exported model's probability. Each pair gets the
inputs of a test row (serve/recipe.py); an unknown id is an error, or with
`unknown=cold` the cold-start row. The input is read and written in bounded batches,
to a temp file that is renamed into place when complete.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
from torch.distributed.elastic.multiprocessing.errors import record

from dlrrec.arrow import parquet_batches
from dlrrec.config import ConfigError, DataError
from dlrrec.entry import run_job
from serve.artifact import Export, read_export
from serve.config import ServeConfig

READ_BATCH_ROWS = 65536


def read_pairs(path: Path, columns: tuple[str, ...] = ("user", "item")) -> Iterator[pa.RecordBatch]:
    """Record batches of a .parquet/.csv file, ids as strings; names a missing column."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.suffix == ".parquet":
        names = pq.read_schema(path).names
        batches: Iterator[pa.RecordBatch] = parquet_batches(path, batch_rows=READ_BATCH_ROWS)
    elif path.suffix == ".csv":
        types = {c: pa.string() for c in columns}
        reader = pcsv.open_csv(path, convert_options=pcsv.ConvertOptions(column_types=types))
        names = reader.schema.names
        batches = iter(reader)
    else:
        raise DataError(f"{path}: expected a .parquet or .csv file")
    missing = [c for c in columns if c not in names]
    if missing:
        raise DataError(f"{path}: missing column {missing[0]!r} (has {names})")
    yield from batches


def score_batch(exp: Export, batch: pa.RecordBatch, cfg: ServeConfig, where: str) -> pa.RecordBatch:
    """`batch` plus the `score` column."""
    users = exp.rows("user", batch.column("user"), cfg.unknown, where)
    items = exp.rows("item", batch.column("item"), cfg.unknown, where)
    probs = 1.0 / (1.0 + np.exp(-exp.logits(users, items, cfg.batch_size).astype(np.float64)))
    names = [n for n in batch.schema.names if n != "score"]
    cols = [batch.column(n) for n in names]
    return pa.RecordBatch.from_arrays(
        [*cols, pa.array(probs.astype(np.float32))], names=[*names, "score"]
    )


def write_batches(out: Path, batches: Iterator[pa.RecordBatch]) -> int:
    """Write to a temp file beside `out`, renamed into place only when complete."""
    if out.suffix not in (".parquet", ".csv"):
        raise ConfigError(f"serve.output: {out}: expected a .parquet or .csv path")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    writer: Any = None
    rows = 0
    try:
        for b in batches:
            if writer is None:
                writer = (
                    pq.ParquetWriter(tmp, b.schema)
                    if out.suffix == ".parquet"
                    else pcsv.CSVWriter(tmp, b.schema)
                )
            writer.write_batch(b)
            rows += b.num_rows
        if writer is None:
            raise DataError("serve.input: no rows to score")
        writer.close()
        os.replace(tmp, out)
    except BaseException:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return rows


def run(cfg: ServeConfig) -> dict[str, Any]:
    if not cfg.input or not cfg.output:
        raise ConfigError(
            "serve.input and serve.output: both are required (input=PAIRS output=OUT)"
        )
    exp = read_export(cfg.run_dir)
    src = Path(cfg.input)
    rows = write_batches(
        Path(cfg.output), (score_batch(exp, b, cfg, str(src)) for b in read_pairs(src))
    )
    print(f"score: {rows} pairs -> {cfg.output}", flush=True)
    return {"rows": rows, "output": cfg.output}


@record
def main(argv: list[str] | None = None, prog: str = "dlrrec score") -> int:
    return run_job(prog, __doc__ or "", ServeConfig, "serve", run, argv)


if __name__ == "__main__":
    sys.exit(main())
