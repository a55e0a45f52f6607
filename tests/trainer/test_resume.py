"""Sharded checkpoint/resume on 2 real gloo ranks: a paused and resumed run equals an uninterrupted one."""

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from dist_helpers import devices, run_ranks
from synthetic import copy_inputs, make_run, train_runs

from trainer.config import TrainConfig

# 4 epochs of 4 steps; dropout on so the per-step torch seeding is exercised
CFG = {"epochs": 4, "batch_size": 256, "max_steps_per_epoch": 4, "dropout": 0.3, "patience": 10, "log_every": 1}


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("synthetic") / "run")


def test_paused_and_resumed_run_equals_uninterrupted(synthetic_run: Path, tmp_path: Path):
    a = copy_inputs(synthetic_run, tmp_path / "a")
    b = copy_inputs(synthetic_run, tmp_path / "b")
    # launch 1: run A to the end; run B pauses mid-epoch 1 (step 6 of 4-step epochs),
    # with step checkpoints every 3 steps
    mid = {**CFG, "checkpoint_every_steps": 3, "stop_after_step": 6}
    (full, paused), _ = run_ranks(train_runs, 2, [(a, CFG), (b, mid)])
    assert paused["status"] == "paused" and paused["step"] == 6 and paused["epoch"] == 1
    ckpts = sorted(p.name for p in (Path(b) / "train" / "checkpoints").glob("step_*"))
    assert "step_00000006" in ckpts and "step_00000004" in ckpts  # the pause point and the best so far
    # launch 2: resume mid-epoch, pause after epoch 2 (3 epochs done)
    (paused2,) = run_ranks(train_runs, 2, [(b, {**CFG, "stop_after_epoch": 3})])[0]
    assert paused2["status"] == "paused" and paused2["step"] == 12
    # launch 3: resume at an epoch boundary and finish
    (resumed,) = run_ranks(train_runs, 2, [(b, CFG)])[0]

    assert resumed["resumed_from"] == [6, 12] and full["resumed_from"] == []
    assert resumed["fingerprint"] == full["fingerprint"]
    assert resumed["best_epoch"] == full["best_epoch"]
    assert resumed["val"] == full["val"]  # identical, not approximately equal
    assert resumed["test"] == full["test"]
    assert resumed["losses"] == full["losses"]
    assert resumed["steps"] == full["steps"] == 16
    # metrics.jsonl holds each step and epoch exactly once, with the same values
    def records(run: str) -> list[dict]:
        lines = (Path(run) / "train" / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(x).items() if k not in ("seconds", "examples_per_s")} for x in lines]

    assert records(b) == records(a)
    # a finished run is reused, not resumed
    (again,) = run_ranks(train_runs, 1, [(b, CFG)])[0]
    assert again == resumed


def test_checkpoint_holds_tensors_only_and_refuses_pickled_objects(synthetic_run: Path, tmp_path: Path):
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    from dlrrec.config import ConfigError
    from trainer.checkpoint import latest_checkpoint, read_metadata_safely

    run = copy_inputs(synthetic_run, tmp_path / "run")
    cfg = {**CFG, "epochs": 2, "max_steps_per_epoch": 2, "stop_after_epoch": 1}
    (paused,) = run_ranks(train_runs, 1, [(run, cfg)])[0]
    assert paused["status"] == "paused"
    ckpt = latest_checkpoint(Path(run) / "train" / "checkpoints")
    assert ckpt is not None
    md = read_metadata_safely(ckpt).state_dict_metadata
    assert all(isinstance(v, TensorStorageMetadata) for v in md.values())
    keys = set(md)
    # both optimizers: the fused row-wise Adagrad state of the sharded tables and dense Adam
    assert any(k.startswith("optim.") and "momentum1" in k for k in keys), sorted(keys)
    assert any(k.startswith("optim.") and k.endswith(".exp_avg_sq") for k in keys), sorted(keys)
    assert not any("param_groups" in k for k in keys)
    assert any(k.startswith("model.") and "t_user_id" in k for k in keys)
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["epoch"] == 0 and state["epoch_done"] and state["fingerprint"] == paused["fingerprint"]

    # a .metadata that would run code is refused before anything is unpickled
    class Evil:
        def __reduce__(self):
            return (shutil.rmtree, (str(tmp_path / "victim"),))

    (tmp_path / "victim").mkdir()
    (ckpt / ".metadata").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(pickle.UnpicklingError, match="shutil.rmtree"):
        read_metadata_safely(ckpt)
    assert (tmp_path / "victim").is_dir()
    # and an unfinished run of another config is refused, not resumed or wiped
    with pytest.raises(ConfigError, match="overwrite=true"):
        _single(run, {**cfg, "dropout": 0.1})
    # so is a checkpoint written by an older trainer (no version: no optimizer state)
    del state["version"]
    (ckpt / "trainer_state.json").write_text(json.dumps(state))
    with pytest.raises(ConfigError, match="cannot resume"):
        _single(run, cfg)


def _single(run: str, overrides: dict) -> dict:
    from trainer.main import run as run_train

    return run_train(TrainConfig(run_dir=run, **overrides))


FUSED = [(opt, "cpu") for opt in ("adagrad", "sgd")] + [
    pytest.param("adam", "cuda", marks=[pytest.mark.gpu, *devices(1)[1].marks]),
    pytest.param("rowwise_adagrad", "cuda", marks=[pytest.mark.gpu, *devices(1)[1].marks]),
]


@pytest.mark.slow
@pytest.mark.parametrize(("optimizer", "device"), FUSED)
def test_resume_is_exact_for_every_fused_optimizer(synthetic_run: Path, tmp_path: Path, optimizer: str, device: str):
    # (row-wise Adagrad on CPU: the test above.) Validations every 2 steps advance
    # fbgemm's Adam step counter between checkpoints; the resumed run must restore it.
    a = copy_inputs(synthetic_run, tmp_path / "a")
    b = copy_inputs(synthetic_run, tmp_path / "b")
    cfg = {**CFG, "epochs": 2, "max_steps_per_epoch": 4, "val_every_steps": 2,
           "sparse_optimizer": optimizer, "device": device, "tensorboard": False}  # fmt: skip
    ((full, paused),) = run_ranks(train_runs, 1, [(a, cfg), (b, {**cfg, "stop_after_step": 5})])
    assert paused["status"] == "paused" and paused["step"] == 5
    state = json.loads((Path(b) / "train" / "checkpoints" / "step_00000005" / "trainer_state.json").read_text())
    # 5 training steps and 2 validations (step 2 and the epoch end at 4), whose batches
    # went through the tables too
    assert state["table_forwards"] > state["step"] == 5 and (state["table_forwards"] - 5) % 2 == 0
    (resumed,) = run_ranks(train_runs, 1, [(b, cfg)])[0]
    assert resumed["resumed_from"] == [5]
    assert (resumed["val"], resumed["test"], resumed["losses"]) == (full["val"], full["test"], full["losses"])


def _train_small_chunks(rank: int, runs: list[tuple[str, dict]]) -> list[dict]:
    """`train_runs` with checkpoints saved in chunks of at most 256 B (a few table rows)."""
    import trainer.checkpoint

    trainer.checkpoint.SAVE_CHUNK_BYTES = 256
    return train_runs(rank, runs)


def test_tables_saved_in_bounded_chunks_resume_exactly(synthetic_run: Path, tmp_path: Path):
    # DCP copies a saved tensor that views a bigger storage (every fused table) and reads
    # a saved chunk whole on load: the tables are saved in row chunks so that a checkpoint
    # costs at most a chunk of extra memory, and a resume from them must still be exact.
    from trainer.checkpoint import latest_checkpoint, read_metadata_safely

    a = copy_inputs(synthetic_run, tmp_path / "a")
    b = copy_inputs(synthetic_run, tmp_path / "b")
    cfg = {**CFG, "epochs": 2, "max_steps_per_epoch": 3, "tensorboard": False}
    ((full,), _) = run_ranks(train_runs, 2, [(a, cfg)])
    ((paused,), _) = run_ranks(_train_small_chunks, 2, [(b, {**cfg, "stop_after_step": 4, "checkpoint_every_steps": 2})])
    assert paused["status"] == "paused"
    md = read_metadata_safely(latest_checkpoint(Path(b) / "train" / "checkpoints")).state_dict_metadata
    (user,) = [v for k, v in md.items() if k.startswith("model.") and k.endswith("t_user_id.weight")]
    rows, dim = user.size
    chunk_rows = max(1, 256 // (dim * 4))
    assert sorted(c.offsets[0] for c in user.chunks) == list(range(0, rows, chunk_rows))
    assert max(c.sizes[0] for c in user.chunks) == chunk_rows < rows
    momentum = [v for k, v in md.items() if k.startswith("optim.") and "t_user_id" in k and "momentum1" in k]
    assert momentum and all(len(v.chunks) == -(-rows // 64) for v in momentum)  # 4 B a row
    # export reads a chunked checkpoint whole, as it reads one saved in whole tables
    from serve.export import read_checkpoint

    whole, chunks = (read_checkpoint(Path(r) / "train" / "checkpoints" / "step_00000003") for r in (a, b))
    assert whole.keys() == chunks.keys() and all(torch.equal(whole[k], chunks[k]) for k in whole)
    ((resumed,), _) = run_ranks(_train_small_chunks, 2, [(b, cfg)])
    assert resumed["resumed_from"] == [4]
    assert (resumed["val"], resumed["test"], resumed["losses"]) == (full["val"], full["test"], full["losses"])
