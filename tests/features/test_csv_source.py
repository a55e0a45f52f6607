"""CSV/TSV review files (features/sources/records.py): parsed in bounded blocks, every
field as its text, converted as pyarrow's whole-file typing (`read_csv`) converted them."""

from __future__ import annotations

import gzip
import random
from pathlib import Path
from typing import Any

import pyarrow.csv as pcsv
import pytest

from dlrrec.config import DataError
from features.main import main
from features.sources import read_source, records
from features.sources.records import Kind, Records, column, iter_records

FIXTURE = Path(__file__).parents[2] / "tests" / "fixtures" / "generic"
HEADER = ["user", "item", "rating", "timestamp", "text", "review_id"]
ITEMS_HEADER = ["item", "title", "categories", "year", "price"]
# Each column's kind as an adapter reads it (features/sources/generic.py).
KINDS: dict[str, Kind] = {"user": "id", "item": "id", "rating": "num", "timestamp": "date",
                          "text": "text", "review_id": "id"}  # fmt: skip
ITEM_KINDS: dict[str, Kind] = {"item": "id", "title": "str", "year": "int", "price": "num"}


def write_csv(path: Path, header: list[str], rows: list[list[str]], sep: str = ",") -> Path:
    text = sep.join(header) + "\n" + "".join(sep.join(r) + "\n" for r in rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def review_rows(n: int, iso: bool = False) -> list[list[str]]:
    """`n` reviews: string user ids, integer item ids, integer and fractional ratings,
    unix or ISO timestamps, texts with quotes, commas, blanks and null-like words."""
    rng = random.Random(0)
    texts = ["good food", '"bad, slow"', "", "NA", "null", 'ok ""quoted""', "5 stars"]
    stamp = (lambda i: f"2021-05-{1 + i % 28:02d}T10:{i % 60:02d}:00Z") if iso else str
    return [
        [f"u{rng.randrange(50)}", str(rng.randrange(1, 40)), rng.choice(["1", "3.5", "4", "5"]),
         stamp(1_500_000_000 + 37 * i), texts[i % len(texts)], f"r{i}"]
        for i in range(n)
    ]  # fmt: skip


def item_rows() -> list[list[str]]:
    """Items 1..39 with optional fields left empty now and then."""
    return [
        [str(i), f"Place {i}", "a|b" if i % 3 else "", str(1990 + i) if i % 5 else "",
         f"{i % 7}.5" if i % 4 else ""]
        for i in range(1, 40)
    ]  # fmt: skip


@pytest.fixture
def review_dir(tmp_path: Path) -> Path:
    d = tmp_path / "reviews"
    write_csv(d / "reviews.csv", HEADER, review_rows(3000))
    write_csv(d / "items.csv", ITEMS_HEADER, item_rows())
    return d


FILES = {"reviews": "reviews.csv", "items": "items.csv"}


def as_dicts(raw: Any) -> dict[str, Any]:
    return {t: getattr(raw, t).to_pylist() for t in ("interactions", "items", "users")} | {
        "skipped": raw.skipped
    }


def test_tiny_blocks_read_as_one_block(review_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = as_dicts(read_source("generic", review_dir, FILES, on_bad_rows="skip"))
    assert (review_dir / "reviews.csv").stat().st_size < records.CSV_BLOCK_BYTES  # one block
    monkeypatch.setattr(records, "CSV_BLOCK_BYTES", 256)  # ~250 blocks
    monkeypatch.setattr(records, "CHUNK_ROWS", 7)
    assert len(list(records._csv_tables(review_dir / "reviews.csv", ","))) > 100
    assert as_dicts(read_source("generic", review_dir, FILES, on_bad_rows="skip")) == whole
    assert whole["skipped"]["empty_text"] == 3000 // 7 + 1  # the blank texts


def test_read_csv_is_never_called(review_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def whole_file(*args: object, **kw: object) -> None:
        raise AssertionError("pyarrow.csv.read_csv holds the whole file")

    monkeypatch.setattr(pcsv, "read_csv", whole_file)
    raw = read_source("generic", review_dir, FILES, on_bad_rows="skip")
    assert raw.interactions.num_rows == 3000 - (3000 // 7 + 1)
    raw = read_source("generic", FIXTURE, {"reviews": "reviews.csv", "items": "products.jsonl"},
                      {"user": "customer", "item": "product", "rating": "stars",
                       "timestamp": "reviewed_at", "text": "body"})  # fmt: skip
    assert raw.interactions.num_rows == 12


def typed_records(path: Path, sep: str = ",") -> Records:
    """The slow reference: the whole file typed by pyarrow's inference, as the reader
    did before it streamed."""
    table = pcsv.read_csv(path, parse_options=pcsv.ParseOptions(delimiter=sep))
    rows = table.to_pylist()
    return Records(path, rows, list(range(2, 2 + len(rows))))


@pytest.mark.parametrize(("name", "iso"), [("reviews.csv", False), ("reviews.tsv", True),
                                           ("reviews.csv.gz", False)])  # fmt: skip
def test_fields_convert_as_whole_file_typing_did(
    name: str, iso: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sep = "\t" if name.endswith(".tsv") else ","
    rows = review_rows(2000, iso)
    if iso:
        rows = [r[:4] + [r[4].replace('"', "")] + r[5:] for r in rows]
    path = write_csv(tmp_path / name, HEADER, rows, sep)
    items = write_csv(tmp_path / "items.csv", ITEMS_HEADER, item_rows())
    monkeypatch.setattr(records, "CSV_BLOCK_BYTES", 1024)
    for file, kinds in ((path, KINDS), (items, ITEM_KINDS)):
        ref = typed_records(file, sep if file == path else ",")
        got = list(iter_records(file, chunk_rows=10))  # blocks of ~25 rows, cut at 10
        assert max(len(r.rows) for r in got) == 10 and min(len(r.rows) for r in got) < 10
        assert [n for r in got for n in r.lines or []] == ref.lines
        for key, kind in kinds.items():
            want = column(ref, key, kind, required=False)
            assert [v for recs in got for v in column(recs, key, kind, required=False)] == want
    assert column(ref, "year", "int", required=False)[4] is None  # an empty field: unset


def test_plain_dates_and_leading_zeros(tmp_path: Path) -> None:
    """Where whole-file typing lost the text (a column of plain dates became date32,
    which no kind took; `007` became 7), the text is read as written."""
    path = write_csv(tmp_path / "r.csv", ["user", "when"], [["007", "2021-01-02"]])
    recs = next(iter_records(path))
    assert column(recs, "user", "id") == ["007"]
    assert column(recs, "when", "date") == [1609545600]


def late_line(tmp_path: Path, line: int, bad: str) -> Path:
    d = tmp_path / "g"
    rows = review_rows(3000)
    rows[line - 2] = bad.split(",")
    write_csv(d / "reviews.csv", HEADER, rows)
    return d


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("u1,3,x,1500000000,ok,r9", "column 'rating' row 2698 (line 2700): expected a finite number, got 'x'"),
        ("u1,3,4,1500000000,ok,r9,extra", "line 2700: expected 6 fields separated by ',', got 7"),
        (",3,4,1500000000,ok,r9", "column 'user' row 2698 (line 2700): expected a non-empty string or integer id, got ''"),
        ("u1,3,4,last tuesday,ok,r9", "column 'timestamp' row 2698 (line 2700): expected a date like"),
        ("u1,3,,1500000000,ok,r9", "column 'rating' row 2698 (line 2700): must be set, got None"),
    ],
)  # fmt: skip
def test_error_in_a_late_block_names_its_line(
    bad: str,
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    d = late_line(tmp_path, 2700, bad)
    monkeypatch.setattr(records, "CSV_BLOCK_BYTES", 512)
    with pytest.raises(SystemExit) as exc:
        main([f"run_dir={tmp_path / 'run'}", f"raw_dir={d}", "source=generic",
              "files.reviews=reviews.csv", "on_bad_rows=skip"])  # fmt: skip
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"dlrrec features build: error: {d}/reviews.csv: {message}"), err


def test_non_utf8_field_names_its_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "g"
    write_csv(d / "reviews.csv", HEADER, review_rows(400))
    lines = (d / "reviews.csv").read_bytes().split(b"\n")
    lines[300] = lines[300].replace(b"u", b"\xff", 1)  # line 301: a user id not in UTF-8
    (d / "reviews.csv").write_bytes(b"\n".join(lines))
    monkeypatch.setattr(records, "CSV_BLOCK_BYTES", 512)
    with pytest.raises(DataError, match=r"column 'user' row 299 \(line 301\): expected a "
                                        r"non-empty string or integer id, got b'\\xff"):  # fmt: skip
        read_source("generic", d, {"reviews": "reviews.csv"}, on_bad_rows="skip")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"reviews\.csv: the file is empty$"),
        (",".join(HEADER) + "\n", r"reviews\.csv: the file is empty \(no records\)"),
    ],
)
def test_empty_csv(text: str, message: str, tmp_path: Path) -> None:
    d = tmp_path / "g"
    d.mkdir()
    (d / "reviews.csv").write_text(text)
    with pytest.raises(DataError, match=message):
        read_source("generic", d, {"reviews": "reviews.csv"}, on_bad_rows="skip")


def test_missing_column(tmp_path: Path) -> None:
    d = tmp_path / "g"
    write_csv(d / "reviews.csv", [h for h in HEADER if h != "rating"],
              [r[:2] + r[3:] for r in review_rows(10)])  # fmt: skip
    with pytest.raises(DataError, match=r"reviews\.csv: missing column 'rating' \(first record"):
        read_source("generic", d, {"reviews": "reviews.csv"}, on_bad_rows="skip")
