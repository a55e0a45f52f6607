"""The sharded model on 2 real gloo ranks, against 1 process on the same data."""

import json
from pathlib import Path

import pytest
from dist_helpers import devices, run_ranks
from synthetic import copy_inputs, make_run

from trainer.config import TrainConfig


def _train(rank: int, run_dir: str, overrides: dict) -> dict:
    from trainer.main import run

    return run(TrainConfig(run_dir=run_dir, **overrides))


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("synthetic") / "run")


@pytest.mark.parametrize("device", devices(2))
def test_two_rank_sharded_training(synthetic_run: Path, tmp_path: Path, device: str):
    # cpu: 2 gloo ranks; cuda: 2 nccl ranks, one GPU each (the later tests reuse the cpu run)
    run = synthetic_run if device == "cpu" else Path(copy_inputs(synthetic_run, tmp_path / "run"))
    cfg = {"epochs": 3, "batch_size": 256, "log_every": 5, "device": device}
    reports = run_ranks(_train, 2, str(run), cfg)
    r0, r1 = reports
    assert r0["world_size"] == 2 and r0["backend"] == ("nccl" if device == "cuda" else "gloo")
    assert r0["device"].startswith(device)
    # every rank reports the same gathered metrics
    assert r0["val"] == r1["val"] and r0["test"] == r1["test"]
    plan = r0["sharding_plan"]
    # the id tables only: the frozen entity vectors come with the batches (disk stores)
    assert set(plan) == {"t_user_id", "t_item_id", "t_categories", "t_gender"}
    assert all(p["sharding_type"] in ("table_wise", "row_wise") for p in plan.values())
    assert {r for p in plan.values() for r in p["ranks"]} == {0, 1}, plan
    # the planted signal is learnable
    assert r0["test"]["auc"] > 0.8
    assert r0["losses"]["item_item"] > 0 and r0["losses"]["user_user"] > 0
    out = run / "train"
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["test"] == r0["test"]
    ckpts = sorted((out / "checkpoints").glob("step_*"))
    assert ckpts and all((c / "trainer_state.json").is_file() for c in ckpts)
    assert Path(r0["best_checkpoint"]) in ckpts
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines if x["kind"] == "epoch"] == list(range(3))
    assert {p.name for p in (out / "plots").glob("*.png")} == {"loss.png", "val_auc.png", "roc.png"}
    assert any(x["kind"] == "step" for x in lines)


def test_rerun_with_same_config_reuses_and_different_config_refuses(synthetic_run: Path, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(synthetic_run / "features", run / "features")
    shutil.copytree(synthetic_run / "similarity", run / "similarity")
    cfg = {"epochs": 1, "batch_size": 256, "max_steps_per_epoch": 3}
    (first,) = run_ranks(_train, 1, str(run), cfg)
    (again,) = run_ranks(_train, 1, str(run), cfg)
    assert again == first
    from dlrrec.config import ConfigError

    with pytest.raises(ConfigError, match="overwrite=true"):
        _train_single(run, {**cfg, "dropout": 0.3})


def _train_single(run: Path, overrides: dict) -> dict:
    from trainer.main import run as run_train

    return run_train(TrainConfig(run_dir=str(run), **overrides))


@pytest.mark.slow  # 3 spawned gloo ranks
def test_three_ranks_train_with_lanes_they_divide(synthetic_run: Path, tmp_path: Path):
    """A world size that does not divide the default 8 lanes trains once `data_lanes` fits it."""
    run = Path(copy_inputs(synthetic_run, tmp_path / "run"))
    cfg = {"epochs": 2, "batch_size": 252, "data_lanes": 6, "device": "cpu"}
    reports = run_ranks(_train, 3, str(run), cfg)
    assert [r["world_size"] for r in reports] == [3, 3, 3]
    assert reports[0]["val"] == reports[1]["val"] == reports[2]["val"]
    assert {r for p in reports[0]["sharding_plan"].values() for r in p["ranks"]} == {0, 1, 2}
    assert reports[0]["test"]["auc"] > 0.8  # the planted signal is learnt
