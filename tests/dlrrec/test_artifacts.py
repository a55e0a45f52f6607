"""The one fingerprint-view and reuse-or-refuse path (dlrrec/artifacts.py)."""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from dlrrec.artifacts import (
    NEWER_DEFAULTS,
    NOT_FINGERPRINTED,
    existing_output,
    fingerprinted_config,
    reusable_record,
)
from dlrrec.config import ConfigError
from features.captions import ImagesConfig
from features.config import FeaturesConfig
from features.llm import LLMConfig
from similarity.config import SwingConfig
from trainer.config import TrainConfig

CONFIGS: dict[str, type] = {
    "features": FeaturesConfig,
    "similarity": SwingConfig,
    "train": TrainConfig,
}


def _field_type(cls: type, name: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert name in fields, f"{cls.__name__} has no key {name!r}"
    return typing.get_type_hints(cls)[name]


@pytest.mark.parametrize("stage", sorted(CONFIGS))
def test_every_listed_key_is_a_key_of_the_stage_config(stage: str) -> None:
    # a typo in a list would silently fingerprint a key meant to be left out
    cls = CONFIGS[stage]
    for key in NOT_FINGERPRINTED[stage]:
        section, _, name = key.rpartition(".")
        if section:
            (section_cls,) = [
                a
                for a in typing.get_args(_field_type(cls, section))
                if isinstance(a, type) and dataclasses.is_dataclass(a)
            ]
            _field_type(section_cls, name)
        else:
            _field_type(cls, name)
    for key, value in NEWER_DEFAULTS[stage].items():
        (f,) = [f for f in dataclasses.fields(cls) if f.name == key]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc,operator]
        assert value == default, f"{stage}.{key}: listed at {value!r}, the default is {default!r}"


def test_train_view_drops_how_keys_and_newer_defaults_only() -> None:
    base = TrainConfig(run_dir="a")
    view = fingerprinted_config(base, "train")
    assert "run_dir" not in view and "device" not in view and "variant" not in view
    assert "lr" in view or "dense_lr" in view
    how = replace(base, run_dir="b", device="cpu", resume=False, log_every=7, tensorboard=True)
    assert fingerprinted_config(how, "train") == view
    assert fingerprinted_config(replace(base, id_dropout=0.1), "train")["id_dropout"] == 0.1
    assert fingerprinted_config(replace(base, seed=base.seed + 1), "train") != view


def test_similarity_view() -> None:
    base = SwingConfig(run_dir="a")
    view = fingerprinted_config(base, "similarity")
    assert set(view) == {f.name for f in dataclasses.fields(SwingConfig)} - set(
        NOT_FINGERPRINTED["similarity"]
    )
    assert (
        fingerprinted_config(replace(base, kernel="numpy", redis_url="redis://x"), "similarity")
        == view
    )
    assert fingerprinted_config(replace(base, alpha1=1.0), "similarity") != view


@pytest.mark.parametrize(
    "cfg",
    [
        FeaturesConfig(run_dir="r"),
        FeaturesConfig(run_dir="r", raw_dir="elsewhere", source="yelp", history_bags=True),
        FeaturesConfig(run_dir="r", llm=LLMConfig(), images=ImagesConfig()),
        FeaturesConfig(
            run_dir="r",
            llm=LLMConfig(cache_dir="c", max_concurrency=3, folds=4),
            images=ImagesConfig(batch_size=2, device="cpu"),
        ),
    ],
)
def test_features_view_equals_the_features_job_config_keys(cfg: FeaturesConfig) -> None:
    # features/main.py adds what only it knows: the split fractions it defaults to and,
    # with a BLIP-2 folder, the model's identity
    from features.main import DEFAULT_FRACTIONS, fingerprint_config

    view = fingerprinted_config(cfg, "features")
    assert fingerprint_config(cfg) == {
        **view,
        "split_fractions": cfg.split_fractions or DEFAULT_FRACTIONS,
    }


def _record(folder: Path, name: str, fp: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps({"fingerprint": fp, "x": 1}))
    return path


def test_reusable_record_reuses_replaces_or_refuses(tmp_path: Path) -> None:
    path = _record(tmp_path / "train", "report.json", "fp1")
    assert reusable_record(path, "fp1", overwrite=False) == {"fingerprint": "fp1", "x": 1}
    assert reusable_record(path, "fp1", overwrite=True) == {"fingerprint": "fp1", "x": 1}
    assert reusable_record(path, "fp2", overwrite=True) is None
    with pytest.raises(
        ConfigError, match=r"train: holds an output of a different config.*overwrite=true"
    ):
        reusable_record(path, "fp2", overwrite=False)
    assert reusable_record(tmp_path / "none.json", "fp1", overwrite=False) is None
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="different config"):
        reusable_record(path, "fp1", overwrite=False)


def test_existing_output_refuses_a_folder_without_meta(tmp_path: Path) -> None:
    final = tmp_path / "similarity"
    assert existing_output(final, "fp", overwrite=False) is False  # absent
    final.mkdir()
    with pytest.raises(ConfigError, match="similarity: holds an output"):
        existing_output(final, "fp", overwrite=False)
    assert existing_output(final, "fp", overwrite=True) is False
    _record(final, "_meta.json", "fp")
    assert existing_output(final, "fp", overwrite=False) is True
    assert existing_output(final, "fp", overwrite=True) is True  # same output: reused
    assert existing_output(final, "other", overwrite=True) is False
    with pytest.raises(ConfigError):
        existing_output(final, "other", overwrite=False)
