"""Sharded checkpoints with torch.distributed.checkpoint (DCP).

Layout: `train/checkpoints/step_XXXXXXXX/` holds the DCP shards of every rank plus
`trainer_state.json` (epoch, step, best metric). Each rank writes its own shards
into `.step_XXXXXXXX.tmp/`; after a barrier rank 0 renames it into place, so a
crash never leaves a checkpoint that looks complete but is not. DCP loads tensors
in place and never unpickles arbitrary objects.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch.distributed.checkpoint as dcp
from torch import nn

from trainer.distributed import barrier

STATE_FILE = "trainer_state.json"


def checkpoint_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:08d}"


def save_checkpoint(
    root: Path, step: int, model: nn.Module, trainer_state: dict[str, Any], is_main: bool
) -> Path:
    """Collective: every rank calls it with the same `step`."""
    final = checkpoint_dir(root, step)
    tmp = root / f".{final.name}.tmp"
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    dcp.save({"model": model.state_dict()}, checkpoint_id=str(tmp))
    barrier()
    if is_main:
        (tmp / STATE_FILE).write_text(json.dumps(trainer_state, indent=2, sort_keys=True))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    barrier()
    return final


def load_checkpoint(path: Path, model: nn.Module) -> dict[str, Any]:
    """Collective: load model shards from `path` in place; return its trainer state."""
    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=str(path))
    model.load_state_dict(state["model"])
    return json.loads((path / STATE_FILE).read_text())


def prune_checkpoints(root: Path, keep_last: int, keep: set[Path], is_main: bool) -> None:
    """Delete all but the newest `keep_last` checkpoints and those in `keep` (rank 0)."""
    if not is_main:
        return
    ckpts = sorted(p for p in root.glob("step_*") if p.is_dir())
    protected = set(ckpts[-keep_last:]) if keep_last > 0 else set()
    for p in ckpts:
        if p not in protected and p not in keep:
            shutil.rmtree(p, ignore_errors=True)
