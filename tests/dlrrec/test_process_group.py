"""The one process-group path and rank-0 helper (dlrrec/process_group.py), on real gloo ranks."""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from dlrrec.process_group import is_rank0, join_group, leave_group, rank0_print
from tests.dist_helpers import run_ranks


def _join_write_leave(rank: int, folder: str, single_rank: bool) -> tuple[bool, int, str, bool]:
    created = join_group("gloo", single_rank=single_rank)
    t = torch.tensor([rank + 1.0])
    dist.all_reduce(t)
    if is_rank0():  # the side effect happens once
        (Path(folder) / f"from-{rank}").write_text("x")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rank0_print("hello", rank)
    leave_group(created)
    return created, int(t.item()), out.getvalue(), dist.is_initialized()


@pytest.mark.parametrize("single_rank", [True, False])
def test_two_ranks_join_reduce_and_only_rank0_writes(tmp_path: Path, single_rank: bool) -> None:
    got = run_ranks(_join_write_leave, 2, str(tmp_path), single_rank)
    assert [g[0] for g in got] == [True, True]  # torchrun's env: both join, both own it
    assert [g[1] for g in got] == [3, 3]  # 1 + 2 on every rank
    assert [g[2] for g in got] == ["hello 0\n", ""]
    assert [g[3] for g in got] == [False, False]  # left again
    assert sorted(p.name for p in tmp_path.iterdir()) == ["from-0"]


def test_lone_process(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not dist.is_initialized()
    assert join_group("gloo", single_rank=False) is False  # SWING: no group for one process
    assert not dist.is_initialized() and is_rank0()
    created = join_group("gloo", single_rank=True)  # the trainer: a one-rank group
    try:
        assert created and dist.get_world_size() == 1 and is_rank0()
        assert join_group("gloo", single_rank=True) is False  # a caller's group is used as is
        leave_group(False)
        assert dist.is_initialized()  # not ours to destroy
    finally:
        leave_group(created)
    assert not dist.is_initialized()
    rank0_print("to stderr", file=sys.stderr)
    assert capsys.readouterr().err == "to stderr\n"
    assert "WORLD_SIZE" not in os.environ
