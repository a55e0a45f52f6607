"""Fixtures shared by the trainer tests."""

import numpy as np
import pytest

from trainer import vector_store


@pytest.fixture
def read_ranges(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(file offset, bytes) of every range the disk stores read from here on (both stores
    read through `trainer.vector_store.scatter_read`'s compiled loop)."""
    ranges: list[tuple[int, int]] = []
    real = vector_store._scatter_pread

    def spy(fd: int, offsets: np.ndarray, sizes: np.ndarray, dest: int) -> int:
        ranges.extend(zip(offsets.tolist(), sizes.tolist(), strict=True))
        return real(fd, offsets, sizes, dest)

    monkeypatch.setattr(vector_store, "_scatter_pread", spy)
    return ranges
