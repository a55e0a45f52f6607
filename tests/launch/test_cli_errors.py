"""Bad input through the `dlrrec` CLI: one line on stderr, exit code 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from launch.cli import main


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err, err
    assert "Traceback" not in err
    return err


def test_unknown_command(capsys):
    assert "unknown command" in run_cli(["frobnicate"], capsys)


def test_missing_config_file(capsys, tmp_path):
    err = run_cli(["train", "--config", str(tmp_path / "nope.yaml")], capsys)
    assert "nope.yaml: no such file" in err


def test_unknown_config_key(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("run_dir: r\ntrain:\n  epochz: 3\n")
    assert "unknown key 'epochz'" in run_cli(["train", "--config", str(cfg)], capsys)


def test_wrong_type(capsys, tmp_path):
    err = run_cli(["train", f"run_dir={tmp_path}", "epochs=three"], capsys)
    assert "train.epochs: expected an integer, got 'three'" in err


def test_train_without_features(capsys, tmp_path):
    err = run_cli(["train", f"run_dir={tmp_path}"], capsys)
    assert "features/_meta.json: missing" in err
    assert not (tmp_path / "train").exists()


def test_raw_table_missing_a_column(capsys, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    pq.write_table(pa.table({"user": ["1"], "item": ["1"], "timestamp": [1]}), raw / "interactions.parquet")
    pq.write_table(pa.table({"item": ["1"], "title": ["x"]}), raw / "items.parquet")
    pq.write_table(pa.table({"user": ["1"]}), raw / "users.parquet")
    err = run_cli(["features", "build", f"run_dir={tmp_path / 'run'}", f"raw_dir={raw}"], capsys)
    assert "interactions.parquet" in err and "rating" in err
    assert not (tmp_path / "run" / "features").exists()


def test_pipeline_override_needs_a_section(capsys):
    err = run_cli(["pipeline", "--config", "configs/smoke.yaml", "epochs=3"], capsys)
    assert "train.epochs=3" in err


def test_report_of_a_missing_run(capsys, tmp_path):
    assert "report.json: missing" in run_cli(["report", str(tmp_path)], capsys)


def test_swing_top_k(capsys, tmp_path):
    assert "top_k" in run_cli(["similarity", "swing", f"run_dir={tmp_path}", "top_k=0"], capsys)


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in ("data fetch", "features build", "similarity swing", "train", "pipeline", "report"):
        assert cmd in out


def test_report_prints_a_table(capsys, tmp_path: Path):
    import json

    (tmp_path / "train").mkdir()
    m = {"auc": 0.8, "logloss": 0.5, "accuracy": 0.7, "fpr": 0.3, "threshold": 0.5, "n": 10}
    (tmp_path / "train" / "report.json").write_text(json.dumps({"val": m, "test": m, "world_size": 2}))
    assert main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "auc" in out and "0.8000" in out and "world_size 2" in out


def test_pipeline_redis_export_needs_a_url(capsys):
    err = run_cli(["pipeline", "--config", "configs/smoke.yaml", "pipeline.export_redis=true"], capsys)
    assert "similarity.redis_url" in err
