"""`val_every_steps` on 2 real gloo ranks: validations inside an epoch are selection candidates.

A validation inside the epoch must not change training (the pipeline's in-flight batches
survive the detach), the best of all validations is the model reported, and a run paused
and resumed between them equals an uninterrupted one.
"""

import json
from pathlib import Path

import pytest
from dist_helpers import run_ranks
from synthetic import copy_inputs, make_run, train_runs

from launch.cli import main

# 3 epochs of 4 steps, validated after steps 2 and 4 of each; dropout on so the per-step
# torch seeding is exercised
CFG = {"epochs": 3, "batch_size": 256, "max_steps_per_epoch": 4, "dropout": 0.3, "patience": 10,
       "log_every": 1, "val_every_steps": 2}  # fmt: skip


def _records(run: str) -> list[dict]:
    lines = (Path(run) / "train" / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k not in ("seconds", "examples_per_s")} for x in lines]


@pytest.mark.slow  # two 2-rank launches, four training runs: ~60 s idle, 75 s under load
def test_validations_inside_epochs_select_and_resume_exactly(tmp_path: Path):
    src = make_run(tmp_path / "synthetic")
    a, b, c = (copy_inputs(src, tmp_path / n) for n in "abc")
    # launch 1: A validates every 2 steps to the end; B does too but pauses at step 5
    # (epoch 1, step 1: after a validation and before the next); C validates at epoch ends only
    (full, paused, plain), _ = run_ranks(train_runs, 2, [(a, CFG), (b, {**CFG, "stop_after_step": 5}), (c, {**CFG, "val_every_steps": 0})])
    assert paused["status"] == "paused" and paused["step"] == 5
    (resumed,) = run_ranks(train_runs, 2, [(b, CFG)])[0]

    recs = _records(a)
    # training is the same with and without validations inside the epoch
    steps = [r for r in recs if r["kind"] == "step"]
    assert steps == [r for r in _records(c) if r["kind"] == "step"]
    assert [r["step"] for r in steps] == list(range(1, 13))
    # validations: after step 2 of each epoch ("val") and at each epoch end ("epoch")
    vals = [r for r in recs if r["kind"] in ("val", "epoch")]
    assert [(r["kind"], r["step"]) for r in vals] == [
        ("val", 2), ("epoch", 4), ("val", 6), ("epoch", 8), ("val", 10), ("epoch", 12)
    ]
    assert [r["epoch_step"] for r in vals if r["kind"] == "val"] == [2, 2, 2]
    # the epoch-end validations are those of the run without inner ones
    assert [r["val"] for r in vals if r["kind"] == "epoch"] == [r["val"] for r in _records(c) if r["kind"] == "epoch"]
    # the reported model is the best of all six validations (first of equals), reloaded
    aucs = [r["val"]["auc"] for r in vals]
    best = vals[aucs.index(max(aucs))]
    assert (full["best_step"], full["best_epoch"]) == (best["step"], best["epoch"])
    assert full["val"]["auc"] == best["val"]["auc"]
    assert Path(full["best_checkpoint"]).name == f"step_{best['step']:08d}"
    assert full["losses"] == best["train"]
    assert max(aucs) >= max(r["val"]["auc"] for r in vals if r["kind"] == "epoch")
    # the first validation (epoch 0, step 2) is always a new best, so a checkpoint was
    # written inside an epoch; B paused after it and resumed to the same end
    assert resumed["resumed_from"] == [5]
    for key in ("val", "test", "losses", "best_step", "best_epoch", "steps", "fingerprint"):
        assert resumed[key] == full[key], key
    assert _records(b) == recs
    # the val AUC plot is drawn from every validation (trainer/plots.py)
    assert {p.name for p in (Path(a) / "train" / "plots").glob("*.png")} == {"loss.png", "val_auc.png", "roc.png"}


def test_negative_val_every_steps_is_a_one_line_error(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["train", f"run_dir={tmp_path}", "val_every_steps=-1"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.val_every_steps" in err
