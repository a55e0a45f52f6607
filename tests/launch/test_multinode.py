"""A simulated 2-node job on loopback: two torchrun agents, one per "node", one worker each.

This is what `torchx run -s kubernetes|slurm launch/components.py:train -j 2x1` starts on a
cluster: one agent per node, meeting at a c10d rendezvous on the first node's port. Here
both agents run on 127.0.0.1; the first to bind the port hosts the store (the c10d backend
falls back to client when the port is taken), so rendezvous, the cross-node gloo group and
sharding across the agents are real, only the network is not.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from dist_helpers import free_port

sys.path.insert(0, str(Path(__file__).parents[1] / "trainer"))
from synthetic import make_run  # noqa: E402

REPO = Path(__file__).parents[2]
TIMEOUT_S = 150


def _agent(port: int, rdzv_id: str, run_dir: Path, log: Path) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", "2", "--nproc_per_node", "1",
        "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", rdzv_id,
        # a lone agent gives up after a minute instead of torchrun's default ten
        "--rdzv_conf", "join_timeout=60",
        "--max-restarts", "0",
        "-m", "launch.cli", "train",
        f"run_dir={run_dir}", "epochs=2", "batch_size=256", "log_every=5",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with log.open("w") as out:
        # its own session, so a hung agent and its worker are killed together
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT_S + 30)
def test_two_torchrun_agents_train_one_sharded_model(tmp_path: Path):
    run_dir = make_run(tmp_path / "run")
    port = free_port()
    rdzv_id = f"mn-{uuid.uuid4().hex[:8]}"
    logs = [tmp_path / f"agent{n}.log" for n in range(2)]
    agents = [_agent(port, rdzv_id, run_dir, log) for log in logs]
    deadline = time.monotonic() + TIMEOUT_S
    codes: list[int | None] = [None, None]
    try:
        codes = [a.wait(timeout=max(1.0, deadline - time.monotonic())) for a in agents]
    except subprocess.TimeoutExpired:
        pass  # codes stay None; the logs below say where it stopped
    finally:
        for a in agents:
            if a.poll() is None:
                os.killpg(a.pid, signal.SIGKILL)
                a.wait()
    tails = "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in logs)
    assert codes == [0, 0], f"exit codes {codes}\n{tails}"

    report = json.loads((run_dir / "train" / "report.json").read_text())
    assert report["world_size"] == 2, report["world_size"]
    assert report["backend"] == "gloo"
    plan = report["sharding_plan"]
    ids = {"t_user_id", "t_item_id", "t_categories", "t_gender"}
    assert set(plan) == ids, plan  # the frozen entity vectors come with the batches
    # every id table lives on exactly one of the two agents' workers, and both hold some
    assert {r for t in ids for r in plan[t]["ranks"]} == {0, 1}, plan
    assert report["best_epoch"] in (0, 1)
    assert report["test"]["auc"] > 0.7, report["test"]
    epochs = [
        json.loads(line)["epoch"]
        for line in (run_dir / "train" / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["kind"] == "epoch"
    ]
    assert epochs == [0, 1]
