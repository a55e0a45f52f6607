"""Process-group setup and the few collectives the trainer needs.

One code path for every launch: a single process, torchrun, TorchX or
`elastic_launch` — gloo on CPU, nccl on CUDA.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from dlrrec.process_group import join_group, leave_group


@dataclass
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    owns_group: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistEnv:
    """Join (or create) the default process group from torchrun's environment.

    Without WORLD_SIZE a one-rank group on an in-memory store is made, so the
    sharded model code is the same for one process and for N.
    """
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        from dlrrec.config import ConfigError

        raise ConfigError("train.device: cuda requested but no CUDA device is visible")
    backend = "nccl" if use_cuda else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        ranks_here = max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), local_rank + 1)
        check_ranks_per_gpu(ranks_here, torch.cuda.device_count())
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    created = join_group(backend, single_rank=True)
    return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, dev, backend, created)


def check_ranks_per_gpu(nproc_per_node: int, gpus: int) -> None:
    """One rank per GPU: nccl cannot share a device between ranks of one group.

    Raises:
        ConfigError: more ranks on this node than visible GPUs, naming both.
    """
    if nproc_per_node > gpus:
        from dlrrec.config import ConfigError

        raise ConfigError(
            f"train: nproc_per_node={nproc_per_node} but this node has {gpus} GPU(s); "
            f"launch at most {gpus} rank(s) per node (-j Nx{gpus}) or pass device=cpu"
        )


def shutdown(env: DistEnv) -> None:
    leave_group(env.owns_group)


def gather_rows(ids: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All-gather (row id, values) pairs of equal length from every rank.

    Returns the rows sorted by id with padding (id -1) dropped: exactly the
    arrays one process would have produced on the whole split.
    """
    t_ids = torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64))
    t_val = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64))
    if dist.is_initialized() and dist.get_world_size() > 1:
        ws = dist.get_world_size()
        dev = _collective_device()
        t_ids, t_val = t_ids.to(dev), t_val.to(dev)
        # equal lengths on every rank are guaranteed by padded eval batches; check anyway
        n = torch.tensor([t_ids.numel()], device=dev)
        sizes = [torch.zeros_like(n) for _ in range(ws)]
        dist.all_gather(sizes, n)
        if len({int(s) for s in sizes}) != 1:
            raise RuntimeError(f"gather_rows: unequal lengths across ranks {[int(s) for s in sizes]}")
        all_ids = [torch.empty_like(t_ids) for _ in range(ws)]
        all_val = [torch.empty_like(t_val) for _ in range(ws)]
        dist.all_gather(all_ids, t_ids)
        dist.all_gather(all_val, t_val)
        t_ids, t_val = torch.cat(all_ids).cpu(), torch.cat(all_val).cpu()
    keep = t_ids >= 0
    order = torch.argsort(t_ids[keep])
    return t_ids[keep][order].numpy(), t_val[keep][order].numpy()


def all_reduce_mean(values: list[float]) -> list[float]:
    """Mean of a few scalars over ranks (for logging only)."""
    t = torch.tensor(values, dtype=torch.float64)
    if dist.is_initialized() and dist.get_world_size() > 1:
        t = t.to(_collective_device())
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t.cpu().tolist()


def all_reduce_sum(counts: np.ndarray) -> np.ndarray:
    """Elementwise int64 sum of an array over ranks (exact counts)."""
    t = torch.from_numpy(np.ascontiguousarray(counts, dtype=np.int64))
    if dist.is_initialized() and dist.get_world_size() > 1:
        t = t.to(_collective_device())
        dist.all_reduce(t)
    return t.cpu().numpy()


def all_gather_objects(obj: object) -> list[object]:
    """Every rank's (picklable, small) object, in rank order."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _collective_device() -> torch.device:
    """nccl only moves CUDA tensors; gloo only CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
