"""Source adapters: review dumps -> the raw-reviews tables of features/schema.py.

`source` (FeaturesConfig) picks one; `raw` reads the Parquet folder that
`dlrrec data fetch` writes.  Each adapter documents the files it reads and their
default names in `raw_dir`; `files: {role: name}` renames them.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from types import ModuleType

from dlrrec.artifacts import sha256_file
from dlrrec.config import ConfigError, DataError
from features.bad_rows import Policy
from features.io import RawReviews, raw_input_hashes, read_raw_reviews
from features.sources import amazon2023, generic, google_local, movielens_udata, yelp
from features.sources.tables import StagedReviews

ADAPTERS: dict[str, ModuleType] = {
    "generic": generic,
    "yelp": yelp,
    "google_local": google_local,
    "amazon2023": amazon2023,
    "movielens_udata": movielens_udata,
}
# Ratings outside this range are a DataError (a 0-10 scale fed as 1-5 is a silent bug).
DEFAULT_RATING_RANGE = {
    "raw": None,
    "generic": None,
    "yelp": (1.0, 5.0),
    "google_local": (1.0, 5.0),
    "amazon2023": (1.0, 5.0),
    "movielens_udata": (0.5, 5.0),
}


def check_source_keys(
    source: str, files: dict[str, str] | None, columns: dict[str, str] | None
) -> None:
    """Config checks that need the adapter's file roles and column names."""
    if source == "raw":
        if files or columns:
            raise ConfigError(
                "features.files/columns: only for a review source (set features.source)"
            )
        return
    roles = ADAPTERS[source].FILES
    for role in files or {}:
        if role not in roles:
            raise ConfigError(
                f"features.files.{role}: unknown file role for source {source} "
                f"(known: {', '.join(roles)})"
            )
    if columns and source != "generic":
        raise ConfigError("features.columns: only for source: generic")
    for name in columns or {}:
        if name not in generic.COLUMNS:
            raise ConfigError(
                f"features.columns.{name}: unknown column (known: {', '.join(generic.COLUMNS)})"
            )


def source_paths(source: str, raw_dir: str | Path, files: dict[str, str] | None) -> dict[str, Path]:
    """{role: path} of a review source's files; fails naming the first missing required file."""
    raw_dir = Path(raw_dir)
    adapter = ADAPTERS[source]
    names = dict(adapter.FILES, **(files or {}))
    paths = {role: raw_dir / name for role, name in names.items()}
    if source == "movielens_udata" and not (files or {}).get("ratings"):
        paths["ratings"] = movielens_udata.default_ratings(raw_dir)
    for role, path in paths.items():
        if role not in adapter.OPTIONAL_FILES and not path.is_file():
            raise DataError(
                f"{path}: no such file; source {source} reads its {role} from raw_dir/{names[role]} "
                f"(rename it with files.{role}=NAME)"
            )
    return paths


def source_input_hashes(
    source: str, raw_dir: str | Path, files: dict[str, str] | None
) -> dict[str, str]:
    """{file name: sha256} of the files the source reads (for `_meta.json` and reuse)."""
    if source == "raw":
        return raw_input_hashes(raw_dir)
    return {
        p.name: sha256_file(p) for p in source_paths(source, raw_dir, files).values() if p.is_file()
    }


def stage_source(
    source: str,
    raw_dir: str | Path,
    work: Path,
    files: dict[str, str] | None = None,
    columns: dict[str, str] | None = None,
    rating_range: tuple[float, float] | None = None,
    on_bad_rows: Policy = "error",
) -> StagedReviews:
    """Read and check one review source (not `raw`), staging its interactions under `work`
    one chunk at a time (features/sources/tables.py `stage_reviews`).

    Bad review rows (features/bad_rows.py) fail with `on_bad_rows: error` and are
    dropped and counted in `StagedReviews.skipped` with `skip`.

    Raises:
        DataError: one line naming the source file, the column and the first bad row.
    """
    paths = source_paths(source, raw_dir, files)
    rng = rating_range or DEFAULT_RATING_RANGE[source] or (float("-inf"), float("inf"))
    if source == "generic":
        return generic.read(paths, rng, columns or {}, on_bad_rows, work)
    return ADAPTERS[source].read(paths, rng, on_bad_rows, work)


def read_source(
    source: str,
    raw_dir: str | Path,
    files: dict[str, str] | None = None,
    columns: dict[str, str] | None = None,
    rating_range: tuple[float, float] | None = None,
    on_bad_rows: Policy = "error",
) -> RawReviews:
    """Read and check one source as raw reviews, all in memory (for small inputs and
    tests; the build streams a source through `stage_source`).

    Raises:
        DataError: one line naming the file, the column and the first bad row.
    """
    if source == "raw":
        return read_raw_reviews(raw_dir, rating_range, on_bad_rows)
    with tempfile.TemporaryDirectory(prefix="dlrrec-source-") as work:
        staged = stage_source(
            source, raw_dir, Path(work), files, columns, rating_range, on_bad_rows
        )
        return staged.reviews()
