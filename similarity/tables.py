"""Parquet I/O of the similarity stage: training positives in, pair tables out.

Two inputs (SwingConfig.input):
- empty: `run_dir/features/` (DESIGN.md artifacts); the TRAIN rows with `label == 1`,
  ids are the features stage's dense `user_id` / `item_id` and are written back as is.
- a plain `.parquet` / `.csv` table with `user` and `item` columns, every row a
  positive.  Ids are mapped to dense indices for the kernel.  Integer ids are written
  back as the original ids; string ids cannot be int64, so the tables then hold the
  dense index and `similarity/ids/{users,items}.parquet` (index int64, id string) maps
  it back.  CSV columns are typed by pyarrow's inference, so "007" reads as 7; use a
  Parquet table with string columns when such ids must stay distinct.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from dlrrec.arrow import parquet_batches
from dlrrec.artifacts import sha256_file
from dlrrec.config import DataError
from dlrrec.meta import read_features_meta

PAIR_SCHEMA = pa.schema(
    [
        pa.field("anchor", pa.int64(), nullable=False),
        pa.field("neighbor", pa.int64(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),
        pa.field("rank", pa.int16(), nullable=False),
    ]
)
KINDS = ("item_item", "user_user")


@dataclass
class Positives:
    """Training positives with dense ids.

    user, item: int64 (E,) dense ids in [0, n_users) / [0, n_items).
    user_ids, item_ids: original id per dense index when they differ from the index
        (int64 array for integer ids, pyarrow string array for string ids), else None.
    """

    user: np.ndarray
    item: np.ndarray
    n_users: int
    n_items: int
    fingerprint: str
    source: str
    user_ids: np.ndarray | pa.Array | None = None
    item_ids: np.ndarray | pa.Array | None = None
    rows_read: int = 0


def read_positives(run_dir: str, input_path: str) -> Positives:
    """Read the training positives SWING runs on (see the module docstring)."""
    if input_path:
        return _read_plain(Path(input_path))
    return _read_features(Path(run_dir) / "features")


def _read_features(stage: Path) -> Positives:
    meta = read_features_meta(stage)
    for key in ("n_users", "n_items", "fingerprint"):
        if key not in meta:
            raise DataError(f"{stage / '_meta.json'}: missing key {key!r}")
    files = sorted((stage / "examples" / "train").glob("part-*.parquet"))
    if not files:
        raise DataError(f"{stage / 'examples' / 'train'}: no part-*.parquet files")
    users, items, rows = [], [], 0
    for f in files:
        names = pq.read_schema(f).names
        for col in ("user_id", "item_id", "label"):
            if col not in names:
                raise DataError(f"{f}: missing column {col!r} (has {', '.join(names)})")
        pos, n = _file_positives(f)
        rows += n
        users.append(_int_column(pos, "user_id", f))
        items.append(_int_column(pos, "item_id", f))
    user = np.concatenate(users)
    item = np.concatenate(items)
    n_users, n_items = int(meta["n_users"]), int(meta["n_items"])
    for name, arr, n in (("user_id", user, n_users), ("item_id", item, n_items)):
        if len(arr) and (arr.min() < 0 or arr.max() >= n):
            raise DataError(
                f"{stage / 'examples' / 'train'}: column {name!r} has ids outside [0, {n}) "
                "declared in _meta.json"
            )
    if len(user) == 0:
        raise DataError(f"{stage / 'examples' / 'train'}: no training positives (label == 1)")
    return Positives(
        user, item, n_users, n_items, str(meta["fingerprint"]), str(stage), rows_read=rows
    )


def _file_positives(f: Path) -> tuple[pa.Table, int]:
    """A train part's `label == 1` rows and its row count, one row group held at a time
    (a part has the rows of many users: only the positives are kept)."""
    cols = ["user_id", "item_id", "label"]
    parts, rows = [], 0
    for b in parquet_batches(f, cols):
        rows += b.num_rows
        parts.append(pa.Table.from_batches([b]).filter(pc.equal(b["label"], 1.0)))
    schema = pq.read_schema(f)
    empty = pa.schema([schema.field(c) for c in cols]).empty_table()
    return pa.concat_tables([empty, *parts]), rows


def _int_column(t: pa.Table, col: str, where: Path) -> np.ndarray:
    c = t[col]
    if c.null_count:
        raise DataError(f"{where}: column {col!r} has {c.null_count} nulls")
    if not pa.types.is_integer(c.type):
        raise DataError(f"{where}: column {col!r} must be integer, got {c.type}")
    return c.to_numpy().astype(np.int64)


def _read_plain(path: Path) -> Positives:
    if not path.is_file():
        raise DataError(f"input {path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            names = pq.read_schema(path).names
            _check_columns(path, names)
            t = pq.read_table(path, columns=["user", "item"])
        elif suffix == ".csv":
            t = pacsv.read_csv(path)
            _check_columns(path, t.column_names)
            t = t.select(["user", "item"])
        else:
            raise DataError(f"input {path}: expected a .parquet or .csv file")
    except (pa.ArrowInvalid, OSError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"input {path}: cannot read: {first}") from None
    if t.num_rows == 0:
        raise DataError(f"input {path}: no interactions (0 rows)")
    user, user_ids = _dense(t["user"], path, "user")
    item, item_ids = _dense(t["item"], path, "item")
    return Positives(
        user,
        item,
        len(user_ids),
        len(item_ids),
        sha256_file(path),
        str(path),
        user_ids=user_ids,
        item_ids=item_ids,
        rows_read=t.num_rows,
    )


def _check_columns(path: Path, names: list[str]) -> None:
    for col in ("user", "item"):
        if col not in names:
            raise DataError(
                f"input {path}: missing column {col!r} (has {', '.join(names) or 'none'}); "
                "a plain interactions table needs `user` and `item` columns"
            )


def _dense(col: pa.ChunkedArray, path: Path, name: str) -> tuple[np.ndarray, np.ndarray | pa.Array]:
    """Dense indices of an id column and the sorted distinct ids they index."""
    if col.null_count:
        raise DataError(f"input {path}: column {name!r} has {col.null_count} nulls")
    if pa.types.is_integer(col.type):
        values = col.to_numpy().astype(np.int64)
        lo, hi = int(values.min()), int(values.max())
        if hi - lo <= 4 * len(values):
            # Compact id ranges (the usual case): a presence table, linear time.
            present = np.zeros(hi - lo + 1, dtype=bool)
            present[values - lo] = True
            index = np.cumsum(present, dtype=np.int64) - 1
            return index[values - lo], np.flatnonzero(present).astype(np.int64) + lo
        ids, dense = np.unique(values, return_inverse=True)
        return dense.astype(np.int64), ids
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        arr = col.combine_chunks().cast(pa.string())
        uniq = pc.unique(arr)
        uniq = uniq.take(pc.sort_indices(uniq))
        dense = pc.index_in(arr, value_set=uniq).to_numpy(zero_copy_only=False)
        return dense.astype(np.int64), uniq
    raise DataError(f"input {path}: column {name!r} must hold integers or strings, got {col.type}")


def write_pairs(
    path: Path, anchor: np.ndarray, neighbor: np.ndarray, score: np.ndarray, rank: np.ndarray
) -> None:
    """One part file of a pair table (anchor int64, neighbor int64, score float32, rank int16)."""
    t = pa.Table.from_arrays(
        [
            pa.array(anchor, pa.int64()),
            pa.array(neighbor, pa.int64()),
            pa.array(score, pa.float32()),
            pa.array(rank, pa.int16()),
        ],
        schema=PAIR_SCHEMA,
    )
    # No dictionary for the scores: float32 scores barely repeat, so building one per
    # page only to fall back costs ~40% of the write and makes the file larger.
    pq.write_table(t, path, compression="zstd", use_dictionary=["anchor", "neighbor", "rank"])


def write_ids(path: Path, ids: pa.Array) -> None:
    """The dense index -> original string id table of one entity kind."""
    t = pa.table({"index": pa.array(np.arange(len(ids), dtype=np.int64)), "id": ids})
    pq.write_table(t, path, compression="zstd")


def read_pairs(stage: Path, kind: str) -> pa.Table:
    """A whole pair table (all part files, in part order)."""
    files = sorted((stage / kind).glob("part-*.parquet"))
    if not files:
        return PAIR_SCHEMA.empty_table()
    return pa.concat_tables([pq.read_table(f, schema=PAIR_SCHEMA) for f in files])
