"""A sealed run (`score_test=false`) never scores test and leaves no test figure anywhere;
a later `score_test=true` run scores its best checkpoint once, without training again.
Both write the selected model's per-row val probabilities."""

import io
import json
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from dist_helpers import run_ranks
from synthetic import copy_inputs, make_run

from launch.report import format_report

CFG = {"epochs": 2, "batch_size": 256, "max_steps_per_epoch": 3, "patience": 10, "log_every": 1,
       "tensorboard": False, "contrastive": False}  # fmt: skip


def _recorded_runs(rank: int, runs: list[tuple[str, dict]]) -> list[dict]:
    """Each run's report, stdout and the splits `evaluate` was asked to score."""
    import torch.distributed as dist

    import trainer.main as tm
    from trainer.config import TrainConfig

    scored: list[str] = []
    evaluate = tm.evaluate

    def spy(dmp, data, spec, *args, **kwargs):  # noqa: ANN001, ANN202
        scored.append(spec.split)
        return evaluate(dmp, data, spec, *args, **kwargs)

    tm.evaluate = spy
    out = []
    dist.init_process_group("gloo")
    try:
        for run_dir, overrides in runs:
            scored.clear()
            buf = io.StringIO()
            with redirect_stdout(buf):
                report = tm.run(TrainConfig(run_dir=run_dir, **overrides))
            out.append({"report": report, "stdout": buf.getvalue(), "scored": list(scored)})
        return out
    finally:
        dist.destroy_process_group()


def _test_figures(obj: Any, where: str) -> list[str]:
    """Paths of every non-null `test` entry in a JSON value."""
    found = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if "test" in k and k != "score_test" and v is not None:
                found.append(f"{where}.{k}")
            found += _test_figures(v, f"{where}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            found += _test_figures(v, f"{where}[{i}]")
    return found


def _pairwise_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """Every (positive, negative) pair compared directly: a win is 1, a tie 1/2."""
    pos, neg = probs[labels == 1].astype(np.float64), probs[labels == 0].astype(np.float64)
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (len(pos) * len(neg)))


@pytest.mark.slow  # two short trainings in spawned ranks: ~60 s on the loaded 2-core machine
def test_sealed_run_never_scores_test_and_unsealing_scores_the_same_model(tmp_path: Path):
    src = make_run(tmp_path / "src")
    sealed_dir = copy_inputs(src, tmp_path / "sealed")
    plain_dir = copy_inputs(src, tmp_path / "plain")
    seal = {**CFG, "score_test": False}
    sealed, reused = run_ranks(_recorded_runs, 1, [(sealed_dir, seal), (sealed_dir, seal)])[0]

    # sealed: test rows never scored, no test figure in the report, stdout or any file
    assert "test" not in sealed["scored"] and "val" in sealed["scored"]
    assert sealed["report"]["test"] is None
    assert "test auc" not in sealed["stdout"] and "test sealed" in sealed["stdout"]
    assert reused["scored"] == [] and reused["report"]["test"] is None
    train = Path(sealed_dir) / "train"
    on_disk = json.loads((train / "report.json").read_text())
    assert on_disk["test"] is None and _test_figures(on_disk, "report") == []
    for line in (train / "metrics.jsonl").read_text().splitlines():
        assert _test_figures(json.loads(line), "metrics") == [], line
    assert sorted(p.name for p in (train / "plots").iterdir()) == ["loss.png", "val_auc.png"]
    table = format_report(on_disk)
    assert "test sealed" in table and f"{sealed['report']['val']['auc']:.4f}" in table
    # the selected model's val rows, in row order, give the report's val AUC
    val_preds = pq.read_table(train / "val_predictions.parquet")
    val_rows = pq.read_table(Path(sealed_dir) / "features" / "examples" / "val")
    assert val_preds["user_id"].to_pylist() == val_rows["user_id"].to_pylist()
    assert val_preds["label"].to_pylist() == val_rows["label"].to_pylist()
    want_auc = _pairwise_auc(val_preds["label"].to_numpy(), val_preds["prob"].to_numpy())
    assert abs(want_auc - sealed["report"]["val"]["auc"]) < 1e-12

    unsealed, plain = run_ranks(_recorded_runs, 1, [(sealed_dir, CFG), (plain_dir, CFG)])[0]
    # unsealed: no training step, test scored once, figures equal a plain scored run's
    assert unsealed["scored"] == ["val", "test"]
    assert "test auc" in unsealed["stdout"] and "resuming" not in unsealed["stdout"]
    got, want = unsealed["report"], plain["report"]
    assert got["steps"] == want["steps"] == 6 and got["resumed_from"] == []
    assert got["fingerprint"] == want["fingerprint"] == sealed["report"]["fingerprint"]
    assert got["val"] == want["val"] == sealed["report"]["val"]
    assert got["test"] == want["test"] and 0 < got["test"]["auc"] < 1
    for split in ("val", "test"):  # the per-user ranking metrics (trainer/metrics.py ranking_report)
        assert {"gauc", "gauc_users", "ndcg@10", "recall@10", "ranking_users"} <= set(got[split])
    assert "gauc" in format_report(got) and "sealed" not in format_report(got)
    assert json.loads((train / "report.json").read_text())["test"] == want["test"]
    # unsealing rescored val from the same checkpoint: the same rows, bit for bit
    assert pq.read_table(train / "val_predictions.parquet").equals(val_preds)
    assert (train / "plots" / "roc.png").is_file()
    # a scored run is reused as is
    assert plain["scored"].count("test") == 1


@pytest.mark.slow  # two short trainings in a spawned rank
def test_a_sealed_run_without_towers_can_be_unsealed(tmp_path: Path):
    """Plain DLRM (no content towers) once kept empty tower weights that never got a
    gradient, so no Adam state: unsealing primes every parameter's state and asked the
    checkpoint for theirs ("Missing key ... projection_arch.weights.0.step")."""
    run_dir = copy_inputs(make_run(tmp_path / "src"), tmp_path / "dlrm")
    cfg = {**CFG, "variant": "dlrm"}
    sealed, unsealed = run_ranks(_recorded_runs, 1, [(run_dir, {**cfg, "score_test": False}), (run_dir, cfg)])[0]
    assert sealed["report"]["test"] is None
    assert unsealed["scored"] == ["val", "test"] and "resuming" not in unsealed["stdout"]
    assert unsealed["report"]["val"] == sealed["report"]["val"] and 0 < unsealed["report"]["test"]["auc"] < 1
