"""The loop's selection metric, TensorBoard scalars and the InfoNCE options, end to end on 1 rank."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from dist_helpers import run_ranks
from synthetic import make_run

from launch.cli import main
from trainer.config import TrainConfig

CFG = {
    "epochs": 3, "batch_size": 256, "max_steps_per_epoch": 4, "log_every": 1, "patience": 10,
    "selection_metric": "fpr_at_recall:0.6", "extra_negatives": 16, "logq_correction": True,
    "infonce_chunk_size": 64, "mask_positive_set": True, "tensorboard": True,
}  # fmt: skip


def _train(rank: int, run_dir: str, overrides: dict) -> dict:
    from trainer.main import run

    return run(TrainConfig(run_dir=run_dir, **overrides))


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict]:
    run = make_run(tmp_path_factory.mktemp("synthetic") / "run")
    (report,) = run_ranks(_train, 1, str(run), CFG)
    return run, report


@pytest.mark.slow  # the 12-step training fixture: ~75 s on the loaded 2-core machine
def test_fpr_at_recall_selects_the_epoch_with_the_lowest_val_fpr(trained):
    run, report = trained
    epochs = [json.loads(x) for x in (run / "train" / "metrics.jsonl").read_text().splitlines()]
    epochs = [x for x in epochs if x["kind"] == "epoch"]
    fprs = [x["val"]["fpr_at_recall"] for x in epochs]
    assert len(fprs) == 3
    assert report["best_epoch"] == int(np.argmin(fprs))  # first of equals: only strict gains count
    assert report["selection_metric"] == "val_fpr_at_recall:0.6"
    # the reported threshold is that operating point on val: recall >= 0.6, FPR as selected
    assert report["val"]["recall"] >= 0.6
    assert report["val"]["fpr"] == pytest.approx(min(fprs), abs=1e-12)
    assert report["losses"]["item_item"] > 0 and report["losses"]["user_user"] > 0


@pytest.mark.slow  # shares the training fixture above
def test_tensorboard_holds_the_step_and_epoch_scalars(trained):
    run, _ = trained
    lines = [json.loads(x) for x in (run / "train" / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in lines if x["kind"] == "step"]
    epochs = [x for x in lines if x["kind"] == "epoch"]
    tb = _scalars(run / "train" / "tensorboard")
    for name in ("loss", "rec", "item_item", "user_user"):
        got = tb[f"step/{name}"]
        assert [s for s, _ in got] == [x["step"] for x in steps] == list(range(1, 13))
        np.testing.assert_allclose([v for _, v in got], [x[name] for x in steps], rtol=1e-6)
    for name in ("auc", "logloss", "fpr_at_recall"):
        got = tb[f"epoch/val_{name}"]
        assert [s for s, _ in got] == [0, 1, 2]
        np.testing.assert_allclose([v for _, v in got], [x["val"][name] for x in epochs], rtol=1e-6)
    assert [s for s, _ in tb["epoch/train_loss"]] == [0, 1, 2]
    assert "epoch/examples_per_s" in tb


@pytest.mark.parametrize("value", ["fpr", "fpr_at_recall:0", "fpr_at_recall:1.5", "fpr_at_recall:x", "AUC"])
def test_bad_selection_metric_is_a_one_line_error(value, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["train", f"run_dir={tmp_path}", f"selection_metric={value}"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "train.selection_metric" in err and "fpr_at_recall:R" in err, err
    assert not (tmp_path / "train").exists()


def test_missing_tensorboard_is_a_one_line_error(capsys, tmp_path, monkeypatch):
    run = make_run(tmp_path / "run")
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now fails
    with pytest.raises(SystemExit) as e:
        main(["train", f"run_dir={run}", "epochs=1"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "train.tensorboard" in err and "tensorboard=false" in err, err
    assert not (run / "train").exists()


def test_progress_bar_only_on_rank_0_at_a_terminal(monkeypatch, tmp_path):
    import torch

    from trainer.distributed import DistEnv
    from trainer.main import Rank0

    def env(rank: int) -> DistEnv:
        return DistEnv(rank, 2, rank, torch.device("cpu"), "gloo", False)

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert not Rank0(env(0), tmp_path, progress_bar=True).bar(10, 0, "epoch 0").disable
    assert Rank0(env(1), tmp_path, progress_bar=True).bar(10, 0, "epoch 0").disable
    assert Rank0(env(0), tmp_path, progress_bar=False).bar(10, 0, "epoch 0").disable
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)  # a log file, TorchX, CI
    assert Rank0(env(0), tmp_path, progress_bar=True).bar(10, 0, "epoch 0").disable
