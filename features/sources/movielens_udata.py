"""MovieLens ratings files -> raw reviews (ratings only; items and users have no content).

    u.data        ML-100K: user_id TAB item_id TAB rating TAB timestamp   (no header)
    ratings.dat   ML-1M/10M: UserID::MovieID::Rating::Timestamp

`files.ratings` picks the file; by default `u.data`, else `ratings.dat`, in raw_dir.
For ML-100K with titles, genres and demographics use `dlrrec data fetch` (source: raw).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dlrrec.config import DataError
from features.bad_rows import Policy
from features.sources import records
from features.sources.records import Records, column
from features.sources.tables import ReviewColumns, StagedReviews, stage_reviews

FILES = {"ratings": "u.data"}
OPTIONAL_FILES: tuple[str, ...] = ()
FIELDS = ("user_id", "item_id", "rating", "timestamp")


def default_ratings(raw_dir: Path) -> Path:
    udata = raw_dir / "u.data"
    dat = raw_dir / "ratings.dat"
    return dat if not udata.is_file() and dat.is_file() else udata


def iter_ratings(path: Path, chunk_rows: int | None = None) -> Iterator[Records]:
    """u.data (tab) or ratings.dat (`::`) lines -> records of the four fields, in chunks."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    sep = "::" if path.name.endswith(".dat") else "\t"
    chunk_rows = chunk_rows or records.CHUNK_ROWS
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    start = 0
    with open(path, encoding="latin-1") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            parts = line.rstrip("\r\n").split(sep)
            if len(parts) != 4:
                raise DataError(
                    f"{path}: line {n}: expected 4 fields separated by {sep!r} "
                    f"({', '.join(FIELDS)}), got {len(parts)}"
                )
            rows.append(dict(zip(FIELDS, parts)))
            lines.append(n)
            if len(rows) == chunk_rows:
                yield Records(path, rows, lines, start)
                start += len(rows)
                rows, lines = [], []
    if rows:
        yield Records(path, rows, lines, start)
        start += len(rows)
    if start == 0:
        raise DataError(f"{path}: the file is empty (no records)")


def review_columns(recs: Records) -> ReviewColumns:
    user = column(recs, "user_id", "id")
    item = column(recs, "item_id", "id")
    return ReviewColumns(
        user=user,
        item=item,
        rating=column(recs, "rating", "num"),
        timestamp=column(recs, "timestamp", "seconds"),
        # One rating per (user, movie) in MovieLens, so the pair is the review id.
        review_id=[f"{u}_{i}" for u, i in zip(user, item)],
    )


def read(
    paths: dict[str, Path], rating_range: tuple[float, float], on_bad_rows: Policy, work: Path
) -> StagedReviews:
    chunks = ((r, review_columns(r)) for r in iter_ratings(paths["ratings"]))
    keys = {"review_id": "user_id+item_id", "rating": "rating", "item": "item_id"}
    return stage_reviews(chunks, keys, rating_range, None, on_bad_rows, work)
