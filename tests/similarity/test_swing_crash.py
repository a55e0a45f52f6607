"""The SWING crash drill: kill -9 both ranks of a 2-rank job mid-table, rerun it, and
the rerun reuses the finished parts, computes the rest and writes tables byte-identical
to an uninterrupted run.

Slow: about 40 s on 2 idle cores (three jobs on a 150k-interaction graph).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dist_helpers import free_port, rank_env

REPO = Path(__file__).resolve().parents[2]

PARTS = 24


def power_law_graph(n_edges: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    n_users, n_items = n_edges // 10, n_edges * 3 // 100
    pu = (np.arange(n_users) + 1.0) ** -0.8
    pi = (np.arange(n_items) + 1.0) ** -0.9
    u = rng.choice(n_users, n_edges, p=pu / pu.sum())
    i = rng.choice(n_items, n_edges, p=pi / pi.sum())
    return pa.table({"user": rng.permutation(n_users)[u], "item": rng.permutation(n_items)[i]})


def start_ranks(world: int, args: list[str], capture: bool = False) -> list[subprocess.Popen]:
    """The ranks of one job as separate processes (torchrun's env), each in its own session."""
    port = free_port()
    procs = []
    for rank in range(world):
        env = {**os.environ, **rank_env(rank, world, port)}
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "similarity.main", *args],
                cwd=REPO,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE if capture else subprocess.DEVNULL,
                text=True,
                start_new_session=True,
            )
        )
    return procs


def launch(world: int, args: list[str]) -> list[subprocess.CompletedProcess]:
    """Run a job to the end; (returncode, stderr) per rank."""
    out = []
    for p in start_ranks(world, args, capture=True):
        _, stderr = p.communicate(timeout=600)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, "", stderr))
    return out


def part_bytes(stage: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(stage)): p.read_bytes() for p in sorted(stage.rglob("part-*.parquet"))
    }


@pytest.mark.slow
def test_kill_9_mid_job_then_rerun_reuses_parts_and_matches(tmp_path: Path):
    data = tmp_path / "interactions.parquet"
    pq.write_table(power_law_graph(150_000, seed=3), data)
    common = [f"input={data}", f"parts={PARTS}", "top_k=20"]

    # The uninterrupted run, 1 process.
    ref_dir = tmp_path / "ref"
    (res,) = launch(1, [f"run_dir={ref_dir}", *common])
    assert res.returncode == 0, res.stderr
    ref_meta = json.loads((ref_dir / "similarity" / "_meta.json").read_text())
    assert ref_meta["item_item"]["parts_reused"] == 0

    # The crashed run: 2 ranks, both SIGKILLed once a few parts are on disk.
    run_dir = tmp_path / "crash"
    args = [f"run_dir={run_dir}", *common]
    procs = start_ranks(2, args)
    progress = None
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            found = list(run_dir.glob(".similarity.partial-*/_progress/*.json"))
            if len(found) >= 3:
                progress = found[0].parent
                break
            assert all(p.poll() is None for p in procs), "the job ended before the kill"
            time.sleep(0.01)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=30)
    assert progress is not None, "no part finished within the deadline"
    assert [p.returncode for p in procs] == [-signal.SIGKILL] * 2
    assert not (run_dir / "similarity").exists()  # nothing published
    done_before = {f.name for f in progress.glob("*.json")}
    assert 3 <= len(done_before) < 2 * PARTS

    # The rerun, 2 ranks: reuses what finished, computes the rest.
    out = launch(2, args)
    assert [r.returncode for r in out] == [0, 0], out[0].stderr + out[1].stderr
    stage = run_dir / "similarity"
    meta = json.loads((stage / "_meta.json").read_text())
    reused = meta["item_item"]["parts_reused"] + meta["user_user"]["parts_reused"]
    assert len(done_before) <= reused < 2 * PARTS
    assert part_bytes(stage) == part_bytes(ref_dir / "similarity")
    for key in ("pairs", "W", "anchors_with_neighbors", "parts"):
        for kind in ("item_item", "user_user"):
            assert meta[kind][key] == ref_meta[kind][key], (kind, key)
    # The published folder is clean and the partial folder is gone.
    assert not list(run_dir.glob(".similarity.*"))
    assert not (stage / "_progress").exists()
    assert not [p for p in stage.rglob(".*")]


def test_partial_folder_of_another_config_is_not_reused(tmp_path: Path):
    data = tmp_path / "interactions.parquet"
    pq.write_table(power_law_graph(20_000, seed=4), data)
    run_dir = tmp_path / "run"
    (first,) = launch(1, [f"run_dir={run_dir}", f"input={data}", "parts=4", "top_k=5"])
    assert first.returncode == 0, first.stderr
    # Fake a leftover partial folder of a different fingerprint with a bogus part.
    stale = run_dir / ".similarity.partial-0123456789abcdef"
    (stale / "_progress").mkdir(parents=True)
    (stale / "_progress" / "item_item-00000.json").write_text("{}")
    (res,) = launch(
        1, [f"run_dir={run_dir}", f"input={data}", "parts=4", "top_k=6", "overwrite=true"]
    )
    assert res.returncode == 0, res.stderr
    assert not stale.exists()
    meta = json.loads((run_dir / "similarity" / "_meta.json").read_text())
    assert meta["item_item"]["parts_reused"] == 0 and meta["user_user"]["parts_reused"] == 0
    assert meta["params"]["top_k"] == 6
