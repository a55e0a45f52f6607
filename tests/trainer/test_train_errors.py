"""Data that cannot train gives one line and exit code 2, never a silent NaN or a pause."""

from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from synthetic import make_run, refresh_counts

from launch.cli import main


def _fail(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    return err


def test_batch_larger_than_the_training_rows(tmp_path: Path, capsys):
    run = make_run(tmp_path / "run", n_rows=200)
    err = _fail(["train", f"run_dir={run}", "batch_size=4096", "epochs=1"], capsys)
    assert "train.batch_size" in err and "4096" in err and "training rows" in err, err
    assert not (run / "train" / "report.json").exists()


def test_val_split_with_one_class(tmp_path: Path, capsys):
    run = make_run(tmp_path / "run", n_rows=600)
    part = run / "features" / "examples" / "val" / "part-00000.parquet"
    t = pq.read_table(part)
    t = t.set_column(t.schema.get_field_index("label"), "label", pc.multiply(t["label"], 0.0))
    pq.write_table(t, part)
    refresh_counts(run)  # the features stage counts the positives
    err = _fail(["train", f"run_dir={run}", "batch_size=64", "epochs=1"], capsys)
    assert "val split" in err and "not both classes" in err and "AUC is undefined" in err, err
    assert not (run / "train" / "report.json").exists()
