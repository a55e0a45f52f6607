"""Every shipped YAML config loads into every stage's dataclass (torchtune's test_configs)."""

from pathlib import Path

import pytest

from dlrrec.config import build_dataclass, load_raw, read_yaml, section_values
from features.config import FeaturesConfig
from launch.experiment import GridConfig
from launch.pipeline import PipelineConfig
from similarity.config import SwingConfig
from trainer.config import TrainConfig

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_loads(path: Path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# dlrrec ") or first.startswith("# torchx "), "config must open with its command"
    if "variants" in read_yaml(path):
        grid = build_dataclass(GridConfig, read_yaml(path), "grid")
        assert (path.parents[1] / grid.base).is_file()
        base = load_raw(path.parents[1] / grid.base, [], None)
        for name, variant in grid.variants.items():
            values = {**section_values(base, "train"), **grid.overrides, **variant, "dropout": grid.dropouts[0]}
            build_dataclass(TrainConfig, values, f"grid.variants.{name}")
        return
    raw = load_raw(path, [], None)
    for cls, sec in (
        (FeaturesConfig, "features"),
        (SwingConfig, "similarity"),
        (TrainConfig, "train"),
        (PipelineConfig, "pipeline"),
    ):
        build_dataclass(cls, section_values(raw, sec), sec)


def test_shipped_configs_exist():
    assert {"movielens-100k.yaml", "smoke.yaml"} <= {p.name for p in CONFIGS}


def test_demo_config_has_the_products_32d_towers():
    """The product's projection towers are 384 -> 32 (issue 17): what `make demo` runs keeps
    32-d tower outputs, whatever interaction dim D it picks (train.tower_dim lifts them)."""
    path = next(p for p in CONFIGS if p.name == "movielens-100k.yaml")
    cfg = build_dataclass(TrainConfig, section_values(load_raw(path, [], None), "train"), "train")
    assert (cfg.tower_dim or cfg.embedding_dim) == 32
