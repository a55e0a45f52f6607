"""A stage that fails inside its TorchX job ends `dlrrec pipeline` with one line naming
the stage and the worker's error, and exit code 2."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from test_e2e_elastic import write_raw_reviews

from launch.cli import main


@pytest.mark.slow
def test_failed_torchx_stage_is_one_line_naming_stage_and_error(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    raw = write_raw_reviews(tmp_path / "raw", n_users=30, n_items=30)
    bad = tmp_path / "pairs.csv"  # SWING's `input=` table without its `item` column
    bad.write_text("user,thing\nu1,i1\nu2,i1\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"run_dir: {tmp_path / 'run'}\nseed: 0\ndataset: tiny\nfeatures:\n  raw_dir: {raw}\n"
        f"similarity:\n  input: {bad}\npipeline:\n  nproc_per_node: 1\n"
    )
    with pytest.raises(SystemExit) as e:
        main(["pipeline", "--config", str(cfg)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"dlrrec pipeline: error: stage similarity failed: DataError: input {bad}: missing column 'item' "
        "(has user, thing); a plain interactions table needs `user` and `item` columns "
        f"(logs under {tmp_path / 'run' / 'logs'})"
    ]
    assert not (tmp_path / "run" / "similarity" / "_meta.json").exists()
