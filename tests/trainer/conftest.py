"""Fixtures shared by the trainer tests."""

import os

import pytest

from trainer import vector_store


@pytest.fixture
def pread_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The byte count of each `os.preadv` call the disk stores make from here on (both
    stores read through `trainer.vector_store.pread_into`)."""
    sizes: list[int] = []
    real = os.preadv

    def spy(fd: int, buffers: list, offset: int) -> int:
        sizes.append(sum(len(b) for b in buffers))
        return real(fd, buffers, offset)

    monkeypatch.setattr(vector_store.os, "preadv", spy)
    return sizes
