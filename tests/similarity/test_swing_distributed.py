"""1 rank (NumPy kernel) vs 2 real gloo ranks (compiled kernel when numba is installed):
byte-identical part files, one _meta.json."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(world: int, args: list[str], timeout: float = 300) -> list[subprocess.CompletedProcess]:
    """`python -m similarity.main ARGS` on `world` ranks, with the env torchrun sets."""
    port = free_port()
    procs = []
    for rank in range(world):
        env = dict(os.environ)
        env.update(
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(world),
            LOCAL_WORLD_SIZE=str(world),
            OMP_NUM_THREADS="1",
        )
        if world == 1:
            for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE"):
                env.pop(k)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "similarity.main", *args],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=timeout)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def test_two_gloo_ranks_match_one(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    n = 6000
    user = rng.integers(0, 400, n)
    item = np.minimum(rng.zipf(1.3, n) - 1, 299)
    path = tmp_path / "interactions.parquet"
    pq.write_table(pa.table({"user": user, "item": item}), path)
    common = [f"input={path}", "parts=5", "top_k=10", "max_users_per_item=40", "seed=9"]

    # The single rank also uses the NumPy kernel: same bits as the compiled one.
    one = launch(1, [f"run_dir={tmp_path / 'one'}", *common, "kernel=numpy"])
    two = launch(2, [f"run_dir={tmp_path / 'two'}", *common])
    assert [p.returncode for p in one] == [0], one[0].stderr
    assert [p.returncode for p in two] == [0, 0], [p.stderr for p in two]

    a, b = tmp_path / "one" / "similarity", tmp_path / "two" / "similarity"
    for kind in ("item_item", "user_user"):
        files_a = sorted(p.name for p in (a / kind).iterdir())
        files_b = sorted(p.name for p in (b / kind).iterdir())
        assert files_a == files_b == [f"part-{k:05d}.parquet" for k in range(5)]
        for name in files_a:
            assert (a / kind / name).read_bytes() == (b / kind / name).read_bytes(), name
        assert pq.read_table(a / kind).num_rows > 0

    meta_a = json.loads((a / "_meta.json").read_text())
    meta_b = json.loads((b / "_meta.json").read_text())
    assert meta_a["world_size"] == 1 and meta_b["world_size"] == 2
    for kind in ("item_item", "user_user"):
        assert len(meta_b[kind]["rank_seconds"]) == 2
        for key in ("pairs", "anchors_with_neighbors", "coverage", "W", "parts"):
            assert meta_a[kind][key] == meta_b[kind][key], (kind, key)
    assert meta_a["fingerprint"] == meta_b["fingerprint"]
    assert not list((tmp_path / "two").glob(".similarity*"))


def _swing_backend(rank: int) -> str:
    """The backend SWING's ranks join on a node that reports a GPU (1 visible, 2 ranks)."""
    import torch
    import torch.distributed as dist

    from similarity.main import _Comm

    torch.cuda.is_available = lambda: True  # type: ignore[method-assign]
    torch.cuda.device_count = lambda: 1  # type: ignore[method-assign]
    comm = _Comm()
    try:
        return str(dist.get_backend())
    finally:
        assert comm.owns_group
        dist.destroy_process_group()


def test_swing_stays_on_gloo_when_the_node_has_fewer_gpus_than_ranks():
    # was: nccl + set_device(local_rank), "invalid device ordinal" on rank 1
    from dist_helpers import run_ranks

    assert run_ranks(_swing_backend, 2) == ["gloo", "gloo"]
