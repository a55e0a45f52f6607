"""Every stage's fingerprint holds its code version, so an artifact of other code is not reused.

The version hashes the sources that shape the stage's output (dlrrec/code_version.py): a
changed SWING kernel changes the similarity fingerprint and the job refuses the old
tables; a changed Redis exporter, README or test does not.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dlrrec.code_version import NOT_SHAPING, code_version, package_root, sources_hash

REPO = Path(__file__).parents[2]
PACKAGES = ("dlrrec", "features", "similarity", "trainer", "launch")


def _copy_code(dst: Path) -> Path:
    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, dst / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def _append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


def test_source_hash_follows_shaping_sources_only(tmp_path: Path):
    code = _copy_code(tmp_path / "code") / "trainer"
    skip = NOT_SHAPING["trainer"]
    base = sources_hash(code, skip)
    assert base == code_version("train")  # the copy hashes like the package it was copied from
    _append(code / "plots.py", "# rendering only\n")
    (code / "README.md").write_text("notes\n")
    (code / "__pycache__").mkdir()
    (code / "__pycache__" / "loss.cpython-311.pyc").write_bytes(b"\0")
    assert sources_hash(code, skip) == base
    _append(code / "loss.py", "# a changed loss\n")
    changed = sources_hash(code, skip)
    assert changed != base
    (code / "loss.py").rename(code / "loss2.py")  # same bytes under another name
    assert sources_hash(code, skip) not in (base, changed)


def test_each_stage_hashes_its_own_package():
    assert len({code_version(s) for s in ("features", "similarity", "train")}) == 3
    assert package_root("similarity") == REPO / "similarity"


def test_trainer_and_features_fingerprints_hold_the_code_version(monkeypatch):
    from types import SimpleNamespace

    import features.main as fm
    import trainer.main as tm
    from features.config import FeaturesConfig
    from trainer.config import TrainConfig

    data = SimpleNamespace(features_meta={"fingerprint": "f"}, similarity_meta={"fingerprint": "s"})
    on = {"device": "cpu", "sparse_optimizer": "rowwise_adagrad"}
    train_fp = tm.fingerprint(TrainConfig(run_dir="r"), data, on)  # type: ignore[arg-type]
    feats_fp = fm.features_fingerprint(FeaturesConfig(run_dir="r"), {"x.parquet": "h"})
    monkeypatch.setattr(tm, "code_version", lambda stage: "other")
    monkeypatch.setattr(fm, "code_version", lambda stage: "other")
    assert tm.fingerprint(TrainConfig(run_dir="r"), data, on) != train_fp  # type: ignore[arg-type]
    assert fm.features_fingerprint(FeaturesConfig(run_dir="r"), {"x.parquet": "h"}) != feats_fp


def _swing(code: Path, run_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "launch.cli", "similarity", "swing", f"run_dir={run_dir}", "kernel=numpy"]
    return subprocess.run(cmd, env=env, cwd=code, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # three SWING jobs in fresh interpreters: ~40 s on the loaded 2-core machine
def test_swing_refuses_tables_of_other_code_and_reuses_across_serving_edits(tmp_path: Path):
    sys.path.insert(0, str(REPO / "tests" / "trainer"))
    from synthetic import make_run

    run = make_run(tmp_path / "run", n_rows=600)
    shutil.rmtree(run / "similarity")
    code = _copy_code(tmp_path / "code")
    first = _swing(code, run)
    assert first.returncode == 0, first.stderr
    _append(code / "similarity" / "redis_export.py", "# serving only\n")
    again = _swing(code, run)
    assert again.returncode == 0 and "reusing" in again.stdout + again.stderr, again.stderr
    _append(code / "similarity" / "swing.py", "# a changed kernel\n")
    refused = _swing(code, run)
    assert refused.returncode == 2, refused.stderr
    err = refused.stderr.strip()
    assert "\n" not in err and "code version" in err and str(run / "similarity") in err, err
