"""Read a source file into records and turn record fields into checked columns.

Every problem is a one-line `DataError` naming the file, the column and the first
bad row, e.g. `review.json: column 'stars' row 2 (line 3): expected a number, got 'five'`.
Rows are counted from 0 over the data records; for line-based files the 1-based line
is given too, which is what an editor shows.

JSON Lines are parsed with the stdlib one line at a time so a broken line can be
named exactly (pyarrow's reader reports a byte block, not a line).  A CSV/TSV is
parsed by pyarrow's streaming reader, `CSV_BLOCK_BYTES` at a time, every field as
its text: a column's type never depends on how much of the file was seen, and
`column` converts the text by the field's kind (`_csv_value`).
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from dlrrec.arrow import parquet_batches
from dlrrec.config import DataError
from features.bad_rows import BadRows

Kind = Literal["id", "str", "text", "num", "int", "seconds", "millis", "date", "str_list"]


# Records per chunk when a review file is read in chunks (`iter_records`): Python
# dicts cost ~1 KB a review, so a chunk stays ~100 MB whatever the file's size.
CHUNK_ROWS = 100_000
# Bytes of CSV text pyarrow parses at a time: what the reader holds besides a chunk.
CSV_BLOCK_BYTES = 1 << 20
# The field texts a CSV reader reads as null (pyarrow's defaults): a number, integer
# or date field holding one of them is unset, as in a column pyarrow would type.
CSV_NULLS = frozenset(pcsv.ConvertOptions().null_values)


@dataclass
class Records:
    """A file's data records (or one chunk of them), with the line each came from
    (None for Parquet).  `start` is the file row of `rows[0]`; `where(i)` names
    local record i by its file row and line."""

    path: Path
    rows: list[dict[str, Any]]
    lines: list[int] | None
    start: int = 0
    csv: bool = False  # the fields are a CSV's texts (`_csv_value` converts them)

    def where(self, row: int) -> str:
        line = f" (line {self.lines[row]})" if self.lines is not None else ""
        return f"row {self.start + row}{line}"


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")  # type: ignore[return-value]
    return open(path, encoding="utf-8")  # noqa: SIM115 - the caller closes it


def _json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with _open_text(path) as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {n} is not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}: line {n} is not a JSON object")
            yield n, obj


def _parquet_batches(path: Path, chunk_rows: int) -> Iterator[list[dict[str, Any]]]:
    try:
        for batch in parquet_batches(path, None, chunk_rows):
            yield batch.to_pylist()
    except (pa.ArrowInvalid, OSError) as e:
        msg = str(e).splitlines()[0]
        raise DataError(f"{path}: not a readable Parquet file ({msg})") from None


def _csv_tables(path: Path, delimiter: str) -> Iterator[pa.Table]:
    """A CSV/TSV file's rows, one parsed block at a time, every field as its bytes.

    Not `pyarrow.csv.read_csv`: it holds the whole file, to infer the column types.
    Serial (`use_threads=False`), so a malformed row comes with its line number.
    """
    bad: list[Any] = []

    def on_invalid(row: Any) -> str:
        bad.append(row)
        return "error"

    parse = pcsv.ParseOptions(delimiter=delimiter, invalid_row_handler=on_invalid)
    read = pcsv.ReadOptions(block_size=CSV_BLOCK_BYTES, use_threads=False)
    try:
        names = pcsv.open_csv(path, read_options=read, parse_options=parse).schema.names
        as_bytes = pcsv.ConvertOptions(column_types=dict.fromkeys(names, pa.binary()))
        for batch in pcsv.open_csv(path, read_options=read, parse_options=parse,
                                   convert_options=as_bytes):  # fmt: skip
            if batch.num_rows:
                yield pa.Table.from_batches([batch])
    except (pa.ArrowInvalid, OSError) as e:
        if bad:
            raise DataError(f"{path}: line {bad[0].number}: expected {bad[0].expected_columns} "
                            f"fields separated by {delimiter!r}, got {bad[0].actual_columns}") from None  # fmt: skip
        if "Empty CSV file" in str(e):
            raise DataError(f"{path}: the file is empty") from None
        msg = str(e).splitlines()[0]
        raise DataError(f"{path}: not a readable CSV file ({msg})") from None


def _csv_rows(table: pa.Table) -> list[dict[str, Any]]:
    """A chunk's records, each field its text (its bytes where they are not UTF-8,
    which `column` names as a bad value, as pyarrow's binary columns were)."""

    def texts(values: pa.ChunkedArray) -> list[Any]:
        try:
            return pc.cast(values, pa.string()).to_pylist()
        except pa.ArrowInvalid:
            return [_decoded(b) for b in values.to_pylist()]

    columns = [texts(c) for c in table.columns]
    return [dict(zip(table.column_names, row, strict=True)) for row in zip(*columns, strict=True)]


def _decoded(field: bytes) -> str | bytes:
    try:
        return field.decode()
    except UnicodeDecodeError:
        return field


def iter_records(path: Path, chunk_rows: int | None = None) -> Iterator[Records]:
    """The records of a `.parquet`, `.csv`, `.tsv` or JSON Lines (`.json`, `.jsonl`,
    `.gz`) file, `chunk_rows` at a time, so a big review dump never sits in memory
    as Python objects all at once.  Parquet is read in pyarrow batches, JSON Lines
    line by line, a CSV in blocks of `CSV_BLOCK_BYTES` (`_csv_tables`), each a chunk
    of its own (or several, past `chunk_rows`), as `read_csv`'s blocks were.

    Raises:
        DataError: the file is missing, unreadable or holds no records.
    """
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    name = path.name.removesuffix(".gz")
    chunk_rows = chunk_rows or CHUNK_ROWS
    start = 0
    if name.endswith(".parquet"):
        for rows in _parquet_batches(path, chunk_rows):
            yield Records(path, rows, None, start)
            start += len(rows)
    elif name.endswith((".csv", ".tsv")):
        for block in _csv_tables(path, "\t" if name.endswith(".tsv") else ","):
            for at in range(0, block.num_rows, chunk_rows):  # a block: ~1 MiB of text
                rows = _csv_rows(block.slice(at, chunk_rows))
                lines = list(range(start + 2, start + 2 + len(rows)))  # line 1 is the header
                yield Records(path, rows, lines, start, csv=True)
                start += len(rows)
    else:
        chunk: list[dict[str, Any]] = []
        lines = []
        for n, obj in _json_lines(path):
            chunk.append(obj)
            lines.append(n)
            if len(chunk) == chunk_rows:
                yield Records(path, chunk, lines, start)
                start += len(chunk)
                chunk, lines = [], []
        if chunk:
            yield Records(path, chunk, lines, start)
            start += len(chunk)
    if start == 0:
        raise DataError(f"{path}: the file is empty (no records)")


def read_records(path: Path) -> Records:
    """All records of a (small: metadata, photos) file at once; see `iter_records`.

    Raises:
        DataError: the file is missing, unreadable or holds no records.
    """
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    has_lines, csv = True, False
    for recs in iter_records(path):
        rows += recs.rows
        csv = recs.csv
        if recs.lines is None:
            has_lines = False
        else:
            lines += recs.lines
    return Records(path, rows, lines if has_lines else None, csv=csv)


def _bad(recs: Records, key: str, row: int, what: str, value: Any) -> DataError:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return DataError(f"{recs.path}: column {key!r} {recs.where(row)}: {what}, got {shown}")


def _convert(value: Any, kind: Kind) -> tuple[bool, Any]:
    """(ok, converted value) for one non-null field."""
    if kind == "id":
        if isinstance(value, str) and value.strip():
            return True, value
        if isinstance(value, int) and not isinstance(value, bool):
            return True, str(value)
        return False, None
    if kind in ("str", "text"):
        return isinstance(value, str), value
    if kind == "num":
        if isinstance(value, bool):
            return False, None
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                return False, None
        if isinstance(value, (int, float)) and math.isfinite(value):
            return True, float(value)
        return False, None
    if kind in ("int", "seconds", "millis"):
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return True, value // 1000 if kind == "millis" else value
        return False, None
    if kind == "date":
        if isinstance(value, int) and not isinstance(value, bool):
            return True, value
        if isinstance(value, dt.datetime):  # a CSV/Parquet column pyarrow parsed as timestamp
            d = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
            return True, int(d.timestamp())
        if isinstance(value, str):
            try:
                d = dt.datetime.fromisoformat(value)
            except ValueError:
                return False, None
            if d.tzinfo is None:
                d = d.replace(tzinfo=dt.UTC)
            return True, int(d.timestamp())
        return False, None
    if kind == "str_list":
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return True, value
        return False, None
    raise ValueError(f"unknown kind {kind!r}")


def _csv_value(value: Any, kind: Kind) -> Any:
    """A CSV field's text as `_convert` takes it: what pyarrow made of the field when
    it typed the whole column (`read_csv`), so a review dump reads as it did."""
    if kind not in ("num", "int", "seconds", "millis", "date") or not isinstance(value, str):
        return value  # an id or a text is the field's text (bytes where not UTF-8)
    if value in CSV_NULLS:
        return None  # a number or date column's empty field, `NA`, `null` ...: unset
    if kind == "date" and value.strip().lstrip("-").isdigit():
        return int(value)  # a column of integers: unix seconds
    return value  # `_convert` parses a number, an integer or an ISO date


_EXPECTED = {
    "id": "expected a non-empty string or integer id",
    "str": "expected a string",
    "text": "expected a non-empty string",
    "num": "expected a finite number",
    "int": "expected an integer",
    "seconds": "expected unix seconds (an integer)",
    "millis": "expected unix milliseconds (an integer)",
    "date": "expected a date like 2016-03-09 00:44:35",
    "str_list": "expected a list of strings",
}


def column(recs: Records, key: str, kind: Kind, required: bool = True) -> list[Any]:
    """One field of every record, converted and checked; None where absent and optional.

    A `text` field may be null (a rating without a review); a blank one is returned
    as it is and flagged as a bad row by `tables.stage_reviews` (see `blank_rows`).

    Raises:
        DataError: the field is missing from the first record (and required), null
            where required, or of the wrong type, naming the first bad row.
    """
    if required and recs.start == 0 and key not in recs.rows[0]:
        found = ", ".join(list(recs.rows[0])[:12])
        raise DataError(f"{recs.path}: missing column {key!r} (first record has: {found})")
    out: list[Any] = []
    for i, rec in enumerate(recs.rows):
        value = rec.get(key)
        if recs.csv:
            value = _csv_value(value, kind)
        if value is None:
            if required:
                raise _bad(recs, key, i, "must be set", value)
            out.append(None)
            continue
        ok, conv = _convert(value, kind)
        if not ok:
            raise _bad(recs, key, i, _EXPECTED[kind], value)
        out.append(conv)
    return out


def blank_rows(recs: Records, key: str, values: list[str | None]) -> BadRows:
    """Rows whose text is blank (null is fine: a rating without a review)."""
    mask = np.array([v is not None and not v.strip() for v in values], dtype=bool)
    i = int(np.argmax(mask)) if mask.any() else 0
    msg = str(
        _bad(
            recs,
            key,
            i,
            "is empty; drop the field or set it to null",
            values[i] if mask.any() else None,
        )
    )
    return BadRows("empty_text", mask, msg)


def repeated_id_rows(recs: Records, key: str, values: list[Any], ignore: np.ndarray) -> BadRows:
    """Rows whose id repeats an earlier, not ignored row's."""
    seen: dict[Any, int] = {}
    mask = np.zeros(len(values), dtype=bool)
    msg = ""
    for i, v in enumerate(values):
        if ignore[i]:
            continue
        if v in seen:
            if not mask.any():
                msg = (
                    f"{recs.path}: column {key!r} {recs.where(i)}: repeats the id {v!r} of "
                    f"{recs.where(seen[v])}; ids must be unique"
                )
            mask[i] = True
        else:
            seen[v] = i
    return BadRows("duplicate_review_id", mask, msg)


def check_unique(recs: Records, key: str, values: list[Any]) -> None:
    """Fail on the first row whose id repeats an earlier row's."""
    found = repeated_id_rows(recs, key, values, np.zeros(len(values), dtype=bool))
    if found.mask.any():
        raise DataError(found.message)


def out_of_range_rows(
    recs: Records, key: str, values: list[float], lo: float, hi: float
) -> BadRows:
    x = np.asarray(values, dtype=np.float64)
    mask = ~((x >= lo) & (x <= hi))
    i = int(np.argmax(mask)) if mask.any() else 0
    msg = str(
        _bad(
            recs,
            key,
            i,
            f"expected a rating in [{lo:g}, {hi:g}]",
            values[i] if mask.any() else None,
        )
    )
    return BadRows("rating_out_of_range", mask, msg)


def check_known(
    recs: Records,
    key: str,
    values: list[str],
    known: set[str],
    where: Path,
    keep: np.ndarray | None = None,
) -> None:
    """Fail on the first (kept) row whose id is not in `known`."""
    for i, v in enumerate(values):
        if v not in known and (keep is None or keep[i]):
            raise DataError(
                f"{recs.path}: column {key!r} {recs.where(i)}: names {v!r}, which is not in {where}"
            )
