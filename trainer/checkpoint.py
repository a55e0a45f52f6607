"""Sharded checkpoints with torch.distributed.checkpoint (DCP), and exact resume.

Layout: `train/checkpoints/step_XXXXXXXX/` (XXXXXXXX = global step) holds
  - the DCP shards of every rank (`__<rank>_0.distcp`) and DCP's `.metadata`:
    `model` (the DMP state dict: sharded tables as ShardedTensor, dense params; the
    frozen entity vectors are no part of the model: batches read them from disk) and
    `optim` (the CombinedOptimizer's *tensor* state: the row-wise Adagrad momentum
    fused into the sharded tables, and dense Adam's step/exp_avg/exp_avg_sq);
  - `trainer_state.json`: everything else (epoch, step, step within the epoch,
    best metric/epoch/checkpoint, bad epochs, partial epoch loss sums, throughput
    counters, the run fingerprint).
Sharded tables are saved in row chunks of at most `SAVE_CHUNK_BYTES` (`chunked`), so
saving and loading cost a chunk of extra host memory, not the largest table on a rank;
DCP loads any chunking into any sharding, so older checkpoints still load.
Each rank writes its shards into `.step_XXXXXXXX.tmp/`; after a barrier rank 0 writes
`trainer_state.json` and renames the folder into place, so a folder named `step_*`
is always complete and a crash leaves at most a stale `.tmp` folder.

Nothing in a checkpoint is unpickled as an arbitrary object:
  - the DCP payload holds tensors only. Optimizer `param_groups` (lr, betas, ...)
    are not saved; they are rebuilt from the config, which the fingerprint pins.
  - DCP reads tensor data with `torch.load(weights_only=True)`, but it unpickles
    `.metadata` with plain `pickle.load` and would `torch.load(weights_only=False)`
    any entry the metadata marks as bytes. `SafeFileSystemReader` therefore
    unpickles `.metadata` with an allow-list of DCP's own metadata classes and
    refuses any bytes entry before DCP reads a single shard.

RNG: no RNG state is saved, because none is needed. The data order and the SWING
positive sampling are pure functions of (seed, epoch, step) (`trainer.data.train_batches`,
which takes a `start_step` to resume inside an epoch), and before every training
step the torch generator, which only dropout draws from, is seeded from
`step_seed(seed, epoch, step, rank)`. So step k of epoch e does the same arithmetic
whether the run got there directly or through any number of resumes; the resume
test checks that the final metrics are bit-identical.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed._shard.metadata import ShardMetadata
from torch.distributed._shard.sharded_tensor import Shard, ShardedTensor, ShardedTensorMetadata
from torch.distributed.checkpoint.filesystem import FileSystemReader
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata, StorageMeta
from torchrec.optim.keyed import CombinedOptimizer

from trainer.distributed import barrier

STATE_FILE = "trainer_state.json"
METADATA_FILE = ".metadata"
STATE_VERSION = 1
# The most bytes of one saved chunk of a sharded table. DCP copies each saved tensor that
# is a view of a bigger storage (as every fused table is: fbgemm packs a rank's tables into
# one buffer), and on load reads each saved chunk whole, so without chunks a checkpoint
# costs the largest table on a rank in extra host memory, twice.
SAVE_CHUNK_BYTES = 16 << 20

# (module, name) pairs DCP's `.metadata` pickle may reference; anything else is refused.
# torch dtypes (`torch.float32`, ...) are allowed too, by type (see `_MetadataUnpickler`).
_METADATA_GLOBALS = {
    ("torch.distributed.checkpoint.metadata", n)
    for n in (
        "Metadata", "MetadataIndex", "TensorStorageMetadata", "TensorProperties",
        "ChunkStorageMetadata", "StorageMeta", "_MEM_FORMAT_ENCODING",
    )
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # layout by name, as torch's weights_only loader allows
    ("pathlib", "PosixPath"),  # StorageMeta.checkpoint_id
    ("pathlib", "WindowsPath"),
    ("collections", "OrderedDict"),
}  # fmt: skip


def step_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    """The torch seed for training step `step` of `epoch` on `rank` (dropout masks)."""
    return int(np.random.SeedSequence([seed, epoch, step, rank]).generate_state(1, np.uint64)[0] >> 1)


def checkpoint_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:08d}"


def tensors_only(tree: Any) -> Any:
    """The tensors of a nested dict (ShardedTensor included); everything else dropped."""
    if isinstance(tree, dict):
        out = {k: tensors_only(v) for k, v in tree.items()}
        return {k: v for k, v in out.items() if isinstance(v, torch.Tensor) or (isinstance(v, dict) and v)}
    return tree if isinstance(tree, torch.Tensor) else None


def _payload(model: nn.Module, optimizer: CombinedOptimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the DCP payload, the optimizer state dict it aliases). param_groups are left out."""
    optimizer.save_param_groups(False)
    optim_sd = optimizer.state_dict()
    model_sd = tensors_only(model.state_dict())
    return {"model": model_sd, "optim": tensors_only(optim_sd["state"])}, optim_sd


def _row_chunks(md: ShardMetadata, rows: int) -> list[ShardMetadata]:
    """Shard `md` cut along dim 0 into chunks of at most `rows` rows (same placement)."""
    n = md.shard_sizes[0]
    if n <= rows:
        return [md]
    return [
        ShardMetadata([md.shard_offsets[0] + a, *md.shard_offsets[1:]],
                      [min(rows, n - a), *md.shard_sizes[1:]], md.placement)
        for a in range(0, n, rows)
    ]  # fmt: skip


def chunked(st: ShardedTensor, max_bytes: int) -> ShardedTensor:
    """The same values as `st`, its shards cut into row chunks of at most `max_bytes`.

    Every rank cuts every shard of the global metadata the same way, so the ranks agree
    on the chunks without a collective; each local chunk is a view, nothing is copied.
    DCP loads a checkpoint into any other cut of the same tensor (it reads overlaps)."""
    md = st.metadata()
    row_bytes = md.tensor_properties.dtype.itemsize * int(np.prod(md.size[1:], dtype=np.int64))
    rows = max(1, max_bytes // max(row_bytes, 1))
    cut = [c for m in md.shards_metadata for c in _row_chunks(m, rows)]
    if len(cut) == len(md.shards_metadata):
        return st
    local = [
        Shard(s.tensor.narrow(0, c.shard_offsets[0] - s.metadata.shard_offsets[0], c.shard_sizes[0]), c)
        for s in st.local_shards()
        for c in _row_chunks(s.metadata, rows)
    ]
    global_md = ShardedTensorMetadata(cut, md.size, md.tensor_properties)
    return ShardedTensor._init_from_local_shards_and_global_metadata(
        local, global_md, process_group=st._process_group
    )


def _chunk_tree(tree: dict[str, Any], max_bytes: int) -> dict[str, Any]:
    """`tree` with every ShardedTensor `chunked` (a new dict; the tensors stay views)."""
    return {
        k: _chunk_tree(v, max_bytes) if isinstance(v, dict)
        else chunked(v, max_bytes) if isinstance(v, ShardedTensor) else v
        for k, v in tree.items()
    }  # fmt: skip


def save_checkpoint(
    root: Path,
    step: int,
    model: nn.Module,
    optimizer: CombinedOptimizer,
    trainer_state: dict[str, Any],
    is_main: bool,
) -> Path:
    """Collective: every rank calls it with the same `step`. Returns the checkpoint folder."""
    final = checkpoint_dir(root, step)
    tmp = root / f".{final.name}.tmp"
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    payload, _ = _payload(model, optimizer)
    dcp.save(_chunk_tree(payload, SAVE_CHUNK_BYTES), checkpoint_id=str(tmp))
    barrier()
    if is_main:
        state = {**trainer_state, "version": STATE_VERSION}
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2, sort_keys=True))
        if final.exists():  # a re-save of the same step (never in a normal run)
            shutil.rmtree(final)
        os.replace(tmp, final)
    barrier()
    return final


def _enum_member(*args: Any) -> Enum:
    """What the unpickler calls in place of `builtins.getattr`.

    Python 3.11.0-3.11.4 (Debian 12's python3 is 3.11.2) pickle an Enum member as
    `getattr(EnumClass, "NAME")` rather than by value, and DCP's TensorProperties holds one
    (`_MEM_FORMAT_ENCODING`). Only that form is accepted: two arguments, an Enum class of
    the allow-list and the name of one of its members.
    """
    if len(args) == 2:
        cls, name = args
        if (
            isinstance(cls, type)
            and issubclass(cls, Enum)
            and (cls.__module__, cls.__qualname__) in _METADATA_GLOBALS
            and isinstance(name, str)
            and name in cls.__members__
        ):
            return cls[name]
    shown = ", ".join(getattr(a, "__qualname__", None) or repr(a)[:60] for a in args)
    raise pickle.UnpicklingError(
        f"checkpoint .metadata calls getattr({shown}), which is not a member of a DCP metadata "
        "Enum; refusing to load it"
    )


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _METADATA_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if (module, name) == ("builtins", "getattr"):
            return _enum_member
        raise pickle.UnpicklingError(
            f"checkpoint .metadata references {module}.{name}, which is not DCP tensor "
            "metadata; refusing to load it"
        )


def unpickle_metadata(data: bytes) -> Any:
    """Unpickle DCP metadata bytes with the allow-list; anything else raises UnpicklingError."""
    return _MetadataUnpickler(io.BytesIO(data)).load()


def read_metadata_safely(path: Path) -> Metadata:
    """DCP's `.metadata` of a checkpoint, unpickled with an allow-list; tensor entries only."""
    md = unpickle_metadata((path / METADATA_FILE).read_bytes())
    if not isinstance(md, Metadata):
        raise pickle.UnpicklingError(f"{path / METADATA_FILE}: not DCP metadata ({type(md).__name__})")
    bytes_keys = [k for k, v in md.state_dict_metadata.items() if isinstance(v, BytesStorageMetadata)]
    if bytes_keys:
        raise pickle.UnpicklingError(
            f"{path / METADATA_FILE}: entries {bytes_keys[:3]} are pickled objects, not tensors; "
            "dlrrec never writes those, refusing to load"
        )
    return md


class SafeFileSystemReader(FileSystemReader):
    """FileSystemReader whose metadata is read by `read_metadata_safely`."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        if kwargs.get("rank") is not None:
            raise ValueError("per-rank DCP metadata is not used by dlrrec checkpoints")
        md = read_metadata_safely(Path(self.path))
        if md.storage_meta is None:
            md.storage_meta = StorageMeta()
        md.storage_meta.load_id = self.load_id
        return md


def load_checkpoint(path: Path, model: nn.Module, optimizer: CombinedOptimizer | None) -> dict[str, Any]:
    """Collective: load the model (and optimizer) state from `path` in place; return its trainer state.

    The optimizer's param_groups stay those built from the config. Dense Adam's state is
    lazy, so an optimizer that has not stepped yet gets a zero-gradient step first
    (torchrec's `init_state`); its values are then overwritten by the checkpoint.
    """
    if optimizer is not None:
        for _, opt in optimizer.optimizers:
            if not opt.state:
                opt.init_state()
        payload, optim_sd = _payload(model, optimizer)
    else:
        payload, optim_sd = {"model": tensors_only(model.state_dict())}, None
    dcp.load(payload, storage_reader=SafeFileSystemReader(str(path)))
    model_sd = model.state_dict()
    _copy_into(model_sd, payload["model"])
    model.load_state_dict(model_sd)
    if optimizer is not None and optim_sd is not None:
        _copy_into(optim_sd["state"], payload["optim"])
        optimizer.load_state_dict(optim_sd)
    return read_trainer_state(path)


def _copy_into(full: dict[str, Any], loaded: dict[str, Any]) -> None:
    """Put the loaded tensors back into the full (tensors + other values) state dict."""
    for k, v in loaded.items():
        if isinstance(v, dict):
            _copy_into(full[k], v)
        else:
            full[k] = v


def read_trainer_state(path: Path) -> dict[str, Any]:
    state: dict[str, Any] = json.loads((path / STATE_FILE).read_text())
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"{path / STATE_FILE}: version {state.get('version')}, expected {STATE_VERSION}")
    return state


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint under `root` (renamed into place, state and metadata present)."""
    done = [
        p
        for p in root.glob("step_*")
        if p.is_dir() and (p / STATE_FILE).is_file() and (p / METADATA_FILE).is_file()
    ]
    return max(done, key=lambda p: p.name) if done else None


def prune_checkpoints(root: Path, keep_last: int, keep: set[Path], is_main: bool) -> None:
    """Delete all but the newest `keep_last` checkpoints and those in `keep` (rank 0)."""
    if not is_main:
        return
    ckpts = sorted(p for p in root.glob("step_*") if p.is_dir())
    protected = set(ckpts[-keep_last:]) if keep_last > 0 else set()
    for p in ckpts:
        if p not in protected and p not in keep:
            shutil.rmtree(p, ignore_errors=True)
