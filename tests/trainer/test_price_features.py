"""The trainer reads the dense features `_meta.json` names: with a price (`price`,
`has_price`) it gets four dense columns, without one the usual two."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dist_helpers import run_ranks

from features.config import FeaturesConfig
from features.main import run as build_features
from trainer.config import TrainConfig
from trainer.data import read_training_data

# The tiny raw-reviews tables of the features tests.
sys.path.insert(0, str(Path(__file__).parents[1] / "features"))
from tiny_reviews import raw_tables, write_raw  # noqa: E402


def _train(rank: int, run_dir: str, overrides: dict) -> dict:
    from trainer.main import run

    return run(TrainConfig(run_dir=run_dir, **overrides))


def _raw_with_prices(raw: Path) -> Path:
    tables = raw_tables()
    items = tables["items.parquet"]
    tiers = [None if i % 3 == 0 else 1 + i % 4 for i in range(items.num_rows)]
    tables["items.parquet"] = items.append_column("price_tier", pa.array(tiers, pa.int32()))
    return write_raw(raw, tables)


@pytest.fixture(scope="module")
def price_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("price")
    raw = _raw_with_prices(tmp / "raw")
    meta = build_features(FeaturesConfig(run_dir=str(tmp / "run"), raw_dir=str(raw)))
    assert meta["dense_features"] == ["year", "age", "price", "has_price"]
    return tmp / "run"


def test_trainer_reads_price_columns(price_run: Path) -> None:
    data = read_training_data(price_run, ["text"], contrastive=False)
    assert data.dense_names == ["year", "age", "price", "has_price"]
    train = pq.read_table(price_run / "features" / "examples" / "train" / "part-00000.parquet")
    expect = np.stack([train[n].to_numpy() for n in data.dense_names], 1)
    np.testing.assert_array_equal(data.read_rows("train").dense, expect)
    assert set(np.unique(expect[:, 3])) == {0.0, 1.0}  # items with and without a price


# 35-90 s on the 2-core machine, by load (rank start-up, torchrec import, one epoch).
@pytest.mark.slow
def test_training_runs_with_price_columns(price_run: Path, tmp_path: Path) -> None:
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(price_run / "features", run_dir / "features")
    cfg = {
        "epochs": 1,
        "batch_size": 16,
        "contrastive": False,
        "tensorboard": False,
        "progress_bar": False,
    }
    (report,) = run_ranks(_train, 1, str(run_dir), cfg)
    assert np.isfinite(report["test"]["logloss"]) and report["world_size"] == 1
