"""The one way every job joins and leaves its process group, and does rank-0-only work.

Joining is restart-safe under TorchElastic. Under `torchrun --max-restarts N` the agent
restarts the whole worker group after a failure, and the workers of every attempt talk
through the agent's one TCPStore (`TORCHELASTIC_USE_AGENT_STORE=True`, same MASTER_PORT
every attempt). Keys written by the failed attempt — e.g. a dead rank's gloo address —
are still there, so a restarted rank can read a stale address and fail to connect. Each
attempt therefore gets its own key namespace (`dlrrec/attempt_<TORCHELASTIC_RESTART_COUNT>/`).

Side effects that must happen once (logs, files, Redis) go through `is_rank0` /
`rank0_print`; reductions go through `torch.distributed`.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from typing import Any, TextIO

import torch.distributed as dist

TIMEOUT = timedelta(minutes=30)


def join_group(backend: str, *, single_rank: bool) -> bool:
    """Join the default process group that torchrun / TorchX / `elastic_launch` set up.

    Without torchrun's environment (no WORLD_SIZE), `single_rank` makes a one-rank group
    on an in-memory store, so sharded code is the same for one process and for N;
    otherwise a lone process (WORLD_SIZE unset or 1) runs without a group. A group that
    already exists (a caller's) is used as it is.

    Returns:
        whether this call created the group (pass it to `leave_group`).
    """
    if dist.is_initialized():
        return False
    if "WORLD_SIZE" in os.environ and (single_rank or int(os.environ["WORLD_SIZE"]) > 1):
        _init_from_env(backend)
        return True
    if single_rank:
        dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)
        return True
    return False


def leave_group(created: bool) -> None:
    """Destroy the default group if `join_group` created it (never a caller's)."""
    if created and dist.is_initialized():
        dist.destroy_process_group()


def _init_from_env(backend: str) -> None:
    """`dist.init_process_group(backend)` from torchrun's environment, one namespace per attempt."""
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is None or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        dist.init_process_group(backend=backend, timeout=TIMEOUT)
        return
    store = dist.TCPStore(
        host_name=os.environ["MASTER_ADDR"],
        port=int(os.environ["MASTER_PORT"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        is_master=False,
        timeout=TIMEOUT,
    )
    dist.init_process_group(
        backend=backend,
        store=dist.PrefixStore(f"dlrrec/attempt_{attempt}", store),
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        timeout=TIMEOUT,
    )


def is_rank0() -> bool:
    """True on rank 0 of the default group, and in a process without one."""
    return not dist.is_initialized() or dist.get_rank() == 0


def rank0_print(*args: Any, file: TextIO | None = None) -> None:
    """`print` on rank 0 only (flushed: several ranks share one terminal or log)."""
    if is_rank0():
        print(*args, file=file or sys.stdout, flush=True)
