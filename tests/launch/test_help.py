"""`--help` is the config reference: every key of the job's section, its type and default."""

import dataclasses

import pytest

from features.config import FeaturesConfig
from launch.cli import main
from launch.pipeline import PipelineConfig
from serve.config import ServeConfig
from similarity.config import SwingConfig
from trainer.config import TrainConfig


def help_text(argv: list[str], capsys) -> str:
    # argparse exits 0 after --help; torch's @record on the distributed jobs' main
    # turns that exit into a plain return.
    try:
        code = main([*argv, "--help"])
    except SystemExit as e:
        code = e.code
    assert code in (0, None)
    return capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, sections",
    [
        (["features", "build"], [(FeaturesConfig, "features")]),
        (["similarity", "swing"], [(SwingConfig, "similarity")]),
        (["train"], [(TrainConfig, "train")]),
        (["export"], [(ServeConfig, "serve")]),
        (["score"], [(ServeConfig, "serve")]),
        (["recommend"], [(ServeConfig, "serve")]),
        (
            ["pipeline"],
            [
                (PipelineConfig, "pipeline"),
                (FeaturesConfig, "features"),
                (SwingConfig, "similarity"),
                (TrainConfig, "train"),
            ],
        ),
    ],
)
def test_help_lists_every_config_key(argv, sections, capsys):
    out = help_text(argv, capsys)
    for cls, section in sections:
        block = out.split(f"config keys of section `{section}:`")[1]
        for f in dataclasses.fields(cls):
            assert f"\n  {f.name} (" in block, (section, f.name)


def test_help_shows_type_default_and_doc(capsys):
    out = help_text(["similarity", "swing"], capsys)
    assert "  top_k (int, default 50)\n      neighbours kept per anchor." in out
    assert "  kernel (auto|numba|numpy, default 'auto')" in out
    assert "  run_dir (str, default required)" in out


def test_help_lists_nested_section_keys(capsys):
    from features.captions import ImagesConfig
    from features.llm import LLMConfig

    out = help_text(["features", "build"], capsys)
    for cls, name in ((LLMConfig, "llm"), (ImagesConfig, "images")):
        for f in dataclasses.fields(cls):
            assert f"\n  {name}.{f.name} (" in out, (name, f.name)
    assert "  llm.folds (int, default 5)\n      K of the out-of-fold summaries" in out


def _commands() -> list[list[str]]:
    from launch.cli import COMMANDS

    return [[]] + [list(words) for words, _, _ in COMMANDS]


@pytest.mark.parametrize("words", _commands(), ids=lambda w: " ".join(w) or "dlrrec")
def test_every_command_help_prints_usage_and_exits_0(words, capsys):
    """Enumerated from the CLI's own table, so a new subcommand is covered too."""
    try:
        code = main([*words, "--help"])
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    assert code in (0, None), (words, captured.err)
    assert captured.out.startswith(f"usage: {' '.join(['dlrrec', *words])}"), captured.out[:200]
    assert captured.err == ""
