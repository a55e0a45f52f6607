"""Bad input -> one line on stderr and exit code 2, through `features.main.main`."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tiny_reviews import fails, write_raw

from features.main import main


def test_missing_raw_file(
    tmp_path: Path, tiny_tables: dict[str, pa.Table], capsys: pytest.CaptureFixture[str]
) -> None:
    raw = write_raw(
        tmp_path / "raw", {k: v for k, v in tiny_tables.items() if k != "interactions.parquet"}
    )
    err = fails([f"run_dir={tmp_path / 'run'}", f"raw_dir={raw}"], capsys)
    assert "interactions.parquet: no such file" in err and "dlrrec data fetch" in err
    assert not (tmp_path / "run" / "features").exists()


def test_missing_column_names_file_and_column(
    tmp_path: Path, tiny_tables: dict[str, pa.Table], capsys: pytest.CaptureFixture[str]
) -> None:
    tables = dict(
        tiny_tables, **{"users.parquet": tiny_tables["users.parquet"].drop_columns(["zip"])}
    )
    raw = write_raw(tmp_path / "raw", tables)
    err = fails([f"run_dir={tmp_path / 'run'}", f"raw_dir={raw}"], capsys)
    assert "users.parquet: missing column 'zip'" in err


def test_wrong_column_type(
    tmp_path: Path, tiny_tables: dict[str, pa.Table], capsys: pytest.CaptureFixture[str]
) -> None:
    inter = tiny_tables["interactions.parquet"]
    idx = inter.schema.get_field_index("rating")
    bad = inter.set_column(idx, "rating", pa.array([str(x) for x in inter["rating"].to_pylist()]))
    raw = write_raw(tmp_path / "raw", dict(tiny_tables, **{"interactions.parquet": bad}))
    err = fails([f"run_dir={tmp_path / 'run'}", f"raw_dir={raw}"], capsys)
    assert "interactions.parquet: column 'rating' has type string, expected float" in err


def test_unknown_item_in_interactions(
    tmp_path: Path, tiny_tables: dict[str, pa.Table], capsys: pytest.CaptureFixture[str]
) -> None:
    items = tiny_tables["items.parquet"]
    raw = write_raw(tmp_path / "raw", dict(tiny_tables, **{"items.parquet": items.slice(1)}))
    err = fails([f"run_dir={tmp_path / 'run'}", f"raw_dir={raw}"], capsys)
    assert "interactions.parquet: column 'item'" in err and "'1'" in err and "items.parquet" in err


def test_not_parquet(tmp_path: Path, tiny_raw: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("items.parquet", "users.parquet"):
        (raw / name).write_bytes((tiny_raw / name).read_bytes())
    (raw / "interactions.parquet").write_text("user,item\n1,2\n")
    err = fails([f"run_dir={tmp_path / 'run'}", f"raw_dir={raw}"], capsys)
    assert "interactions.parquet: not a readable Parquet file" in err


def test_empty_train_split(
    tmp_path: Path, tiny_tables: dict[str, pa.Table], capsys: pytest.CaptureFixture[str]
) -> None:
    inter = tiny_tables["interactions.parquet"]
    idx = inter.schema.get_field_index("timestamp")
    same = inter.set_column(
        idx, inter.schema.field(idx), pa.array([7] * inter.num_rows, pa.int64())
    )
    raw = write_raw(tmp_path / "raw", dict(tiny_tables, **{"interactions.parquet": same}))
    err = fails([f"run_dir={tmp_path / 'run'}", f"raw_dir={raw}", "split=temporal"], capsys)
    assert "no training rows" in err


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("seed=abc", "features.seed: expected an integer, got 'abc'"),
        ("bogus=1", "unknown key 'bogus'"),
        ("split=weekly", "features.split: expected one of random|temporal"),
        ("split_fractions=[0.5,0.5]", "features.split_fractions"),
    ],
)
def test_bad_config(
    override: str, message: str, tmp_path: Path, tiny_raw: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = fails([f"run_dir={tmp_path / 'run'}", f"raw_dir={tiny_raw}", override], capsys)
    assert message in err


def test_missing_run_dir(tiny_raw: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "missing required key 'run_dir'" in fails([f"raw_dir={tiny_raw}"], capsys)


def test_main_builds(tmp_path: Path, tiny_raw: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([f"run_dir={tmp_path}", f"raw_dir={tiny_raw}"]) == 0
    assert pq.read_table(
        tmp_path / "features" / "examples" / "train" / "part-00000.parquet"
    ).num_rows
    assert "features: wrote" in capsys.readouterr().err
