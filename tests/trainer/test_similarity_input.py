"""Training refuses SWING tables that were not built from its own features artifact.

The audit's recipe: features built with seed=1, SWING run on them, and those tables
copied beside the seed=0 features. Seed 1's training positives include rows that are
val/test rows under seed 0, so accepting the tables would leak them into InfoNCE.
"""

import json
import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "features"))
from tiny_reviews import raw_tables, write_raw  # noqa: E402

from features.config import FeaturesConfig  # noqa: E402
from features.main import run as build_features  # noqa: E402
from launch.cli import main  # noqa: E402
from similarity.config import SwingConfig  # noqa: E402
from similarity.main import run as swing  # noqa: E402
from trainer.data import read_training_data  # noqa: E402

# two MiniLM features builds and SWING runs in the fixture: ~90 s on the loaded 2-core machine
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[int, Path]:
    """Features with seed 0 and seed 1 on the same raw reviews, each with its own SWING."""
    raw = write_raw(tmp_path_factory.mktemp("raw"), raw_tables())
    out = {}
    for seed in (0, 1):
        run_dir = tmp_path_factory.mktemp(f"seed{seed}")
        build_features(FeaturesConfig(run_dir=str(run_dir), raw_dir=str(raw), seed=seed))
        swing(SwingConfig(run_dir=str(run_dir)))
        out[seed] = run_dir
    return out


def _train_fails(run_dir: Path, capsys) -> str:
    capsys.readouterr()  # the SWING job's log
    with pytest.raises(SystemExit) as e:
        main(["train", f"run_dir={run_dir}", "epochs=1", "batch_size=8", "tensorboard=false"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    return err


def test_tables_of_its_own_features_are_accepted(runs: dict[int, Path]):
    data = read_training_data(runs[0], ["text"], contrastive=True)
    assert data.similarity_meta["input"]["fingerprint"] == data.features_meta["fingerprint"]


def test_tables_of_another_features_build_are_refused(runs: dict[int, Path], tmp_path: Path, capsys):
    victim = tmp_path / "run"
    shutil.copytree(runs[0] / "features", victim / "features")
    shutil.copytree(runs[1] / "similarity", victim / "similarity")  # seed 1's tables beside seed 0's features
    err = _train_fails(victim, capsys)
    want = json.loads((runs[0] / "features" / "_meta.json").read_text())["fingerprint"]
    assert str(victim / "similarity" / "_meta.json") in err and want[:12] in err, err
    assert "dlrrec similarity swing" in err
    assert not (victim / "train").exists()


def test_tables_of_a_plain_input_file_are_refused(runs: dict[int, Path], tmp_path: Path, capsys):
    """`input=` tables are tied to no features artifact (nor to its dense ids)."""
    victim = tmp_path / "run"
    shutil.copytree(runs[0] / "features", victim / "features")
    train = pq.read_table(runs[0] / "features" / "examples" / "train")
    pairs = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"user": train["user_id"], "item": train["item_id"]}), pairs)
    swing(SwingConfig(run_dir=str(victim), input=str(pairs)))
    err = _train_fails(victim, capsys)
    assert str(pairs) in err and "not from this run's features" in err, err
