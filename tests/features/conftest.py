"""Fixtures of the features tests: a tiny raw-reviews folder and its built outputs.

The builds share one in-process MiniLM (features.text.load_text_model caches it), so
only the first build pays the ~10 s model load.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from tiny_reviews import raw_tables, read_outputs, write_raw

from features.config import FeaturesConfig
from features.main import run


@pytest.fixture(scope="session")
def tiny_tables() -> dict[str, pa.Table]:
    return raw_tables()


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory: pytest.TempPathFactory, tiny_tables: dict[str, pa.Table]) -> Path:
    return write_raw(tmp_path_factory.mktemp("raw"), tiny_tables)


@pytest.fixture(scope="session")
def build(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., dict[str, Any]]:
    """build(raw_dir, **config) -> read_outputs of a fresh run_dir."""

    def _build(raw_dir: Path, **config: Any) -> dict[str, Any]:
        run_dir = tmp_path_factory.mktemp("run")
        run(FeaturesConfig(run_dir=str(run_dir), raw_dir=str(raw_dir), **config))
        out = read_outputs(run_dir)
        out["run_dir"] = run_dir
        return out

    return _build


@pytest.fixture(scope="session")
def built_random(build: Callable[..., dict[str, Any]], tiny_raw: Path) -> dict[str, Any]:
    return build(tiny_raw, split="random", seed=3)


@pytest.fixture(scope="session")
def built_temporal(build: Callable[..., dict[str, Any]], tiny_raw: Path) -> dict[str, Any]:
    return build(tiny_raw, split="temporal")
