"""Joining the process group that torchrun/TorchElastic set up, restart-safe.

Under `torchrun --max-restarts N` the agent restarts the whole worker group after a
failure, and the workers of every attempt talk through the agent's one TCPStore
(`TORCHELASTIC_USE_AGENT_STORE=True`, same MASTER_PORT every attempt). Keys written
by the failed attempt — e.g. a dead rank's gloo address — are still there, so a
restarted rank can read a stale address and fail to connect. Each attempt therefore
gets its own key namespace (`dlrrec/attempt_<TORCHELASTIC_RESTART_COUNT>/`).
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch.distributed as dist

TIMEOUT = timedelta(minutes=30)


def init_process_group_from_env(backend: str) -> None:
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
