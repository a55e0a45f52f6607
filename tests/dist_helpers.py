"""Run a function on N real gloo ranks (separate processes) and collect the results.

Each rank gets MASTER_ADDR/PORT, RANK, WORLD_SIZE and LOCAL_RANK as torchrun would
set them; every exit code must be 0.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import traceback
from collections.abc import Callable
from typing import Any


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rank_env(rank: int, world: int, port: int) -> dict[str, str]:
    """The environment torchrun gives rank `rank` of `world` on one loopback host."""
    return dict(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
        OMP_NUM_THREADS="1",
    )


def _rank_main(fn: Callable[..., Any], rank: int, world: int, port: int, q: Any, args: tuple) -> None:
    os.environ.update(rank_env(rank, world, port))
    try:
        q.put((rank, "ok", fn(rank, *args)))
    except BaseException:
        q.put((rank, "error", traceback.format_exc()))
        raise


def run_ranks(fn: Callable[..., Any], world: int, *args: Any, timeout: float = 600) -> list[Any]:
    """fn(rank, *args) on `world` processes; returns results in rank order."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_rank_main, args=(fn, r, world, port, q, args)) for r in range(world)]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    errors = []
    for _ in range(world):
        rank, status, value = q.get(timeout=timeout)
        if status == "ok":
            results[rank] = value
        else:
            errors.append(f"rank {rank}:\n{value}")
    for p in procs:
        p.join(timeout=60)
    codes = [p.exitcode for p in procs]
    assert not errors, "\n".join(errors)
    assert codes == [0] * world, f"exit codes {codes}"
    return [results[r] for r in range(world)]


def devices(gpus_needed: int = 1) -> list[Any]:
    """pytest params "cpu" (gloo) and "cuda" (nccl, marked `gpu`, skipped with fewer than
    `gpus_needed` CUDA devices), for tests that run unchanged on both."""
    import pytest
    import torch

    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    skip = pytest.mark.skipif(have < gpus_needed, reason=f"needs {gpus_needed} CUDA device(s), found {have}")
    return ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, skip])]


def init_group(device: str) -> Any:
    """Join the launcher's group: gloo on CPU, nccl with one GPU per local rank on CUDA.
    Returns the torch device this rank computes on."""
    import torch
    import torch.distributed as dist

    if device == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group("nccl")
        return torch.device("cuda", torch.cuda.current_device())
    dist.init_process_group("gloo")
    return torch.device("cpu")
