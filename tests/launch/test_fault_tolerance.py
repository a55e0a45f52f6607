"""The kill -9 drill: one of 2 ranks dies mid-epoch, TorchElastic restarts the group
(`--max-restarts 1`), the workers resume from the newest checkpoint and finish with the
same final metrics as a run that was never interrupted."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dist_helpers import free_port

sys.path.insert(0, str(Path(__file__).parents[1] / "trainer"))
from synthetic import make_run  # noqa: E402

REPO = Path(__file__).parents[2]
TRAIN = ["epochs=4", "batch_size=64", "eval_batch_size=256", "checkpoint_every_steps=5", "dropout=0.3", "patience=10"]


def torchrun(run_dir: Path, log: Path, max_restarts: int) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", "1", "--nproc_per_node", "2",
        "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{free_port()}",
        "--max-restarts", str(max_restarts), "--monitor-interval", "0.5",
        "-m", "launch.cli", "train", f"run_dir={run_dir}", *TRAIN,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with log.open("w") as out:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def worker_pid(agent: subprocess.Popen, rank: int) -> int | None:
    """The pid of the worker with RANK=`rank` among the agent's children."""
    out = subprocess.run(["pgrep", "-P", str(agent.pid)], capture_output=True, text=True).stdout
    for pid in out.split():
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and b"TORCHELASTIC_RESTART_COUNT=0" in env:
            return int(pid)
    return None


def finish(agent: subprocess.Popen, timeout: float) -> int:
    try:
        return agent.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(agent.pid, signal.SIGKILL)
        raise


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_kill_9_one_rank_mid_epoch_restarts_and_matches(tmp_path: Path):
    base = make_run(tmp_path / "base")
    runs = {}
    for name in ("clean", "killed"):
        runs[name] = tmp_path / name
        for stage in ("features", "similarity"):
            shutil.copytree(base / stage, runs[name] / stage)

    clean = torchrun(runs["clean"], tmp_path / "clean.log", max_restarts=0)
    assert finish(clean, 180) == 0, (tmp_path / "clean.log").read_text()[-3000:]

    killed = torchrun(runs["killed"], tmp_path / "killed.log", max_restarts=1)
    ckpts = runs["killed"] / "train" / "checkpoints"
    victim = None
    deadline = time.monotonic() + 120
    # wait until the run is in its second epoch with a step checkpoint behind it, then kill rank 1
    while time.monotonic() < deadline and killed.poll() is None:
        steps = sorted(int(p.name.split("_")[1]) for p in ckpts.glob("step_*")) if ckpts.is_dir() else []
        state = [json.loads((ckpts / f"step_{s:08d}" / "trainer_state.json").read_text()) for s in steps[-1:]]
        if state and state[0]["epoch"] >= 1:
            victim = worker_pid(killed, 1)
            if victim:
                os.kill(victim, signal.SIGKILL)
                break
        time.sleep(0.05)
    assert victim is not None, "the run ended before a rank could be killed"
    code = finish(killed, 240)
    log = (tmp_path / "killed.log").read_text()
    assert code == 0, log[-3000:]
    # torchelastic saw a worker fail (rank 1's SIGKILL, or rank 0 losing its peer first,
    # whichever the agent notices first); the group was restarted (resumed_from below)
    assert "failed (exitcode: " in log, log[-3000:]

    a = json.loads((runs["clean"] / "train" / "report.json").read_text())
    b = json.loads((runs["killed"] / "train" / "report.json").read_text())
    assert b["resumed_from"], "the restarted group must resume from a checkpoint"
    for key in ("val", "test", "best_epoch", "losses", "steps"):
        assert a[key] == b[key], key
