from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from dlrrec.config import ConfigError, load_config, parse_override


@dataclass
class Demo:
    run_dir: str
    seed: int = 0
    lr: float = 0.1
    sizes: list[int] = field(default_factory=lambda: [1])
    mode: Literal["a", "b"] = "a"
    name: str | None = None


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_sections_common_keys_and_overrides(tmp_path):
    p = write(tmp_path, "run_dir: r\nseed: 3\ntrain:\n  lr: 1\n  sizes: [2, 3]\n")
    cfg = load_config(Demo, p, ["mode=b", "train.name=x", "seed=4"], "train")
    assert cfg == Demo(run_dir="r", seed=4, lr=1.0, sizes=[2, 3], mode="b", name="x")


def test_exponent_floats_without_a_dot_are_numbers(tmp_path):
    """PyYAML (YAML 1.1) reads 1e-5 as a string; a float key takes it as the number."""
    p = write(tmp_path, "run_dir: r\ntrain:\n  lr: 1e-3\n")
    assert load_config(Demo, p, [], "train").lr == 1e-3
    assert load_config(Demo, p, ["lr=-2E+2"], "train").lr == -200.0
    with pytest.raises(ConfigError, match="train.lr: expected a number, got '1e'"):
        load_config(Demo, p, ["lr=1e"], "train")


@pytest.mark.parametrize(
    "text,overrides,msg",
    [
        ("run_dir: r\ntrain:\n  lrr: 1\n", [], "unknown key 'lrr'"),
        ("run_dir: r\n", ["seed=abc"], "train.seed: expected an integer, got 'abc'"),
        ("run_dir: r\n", ["lr=true"], "expected a number"),
        ("run_dir: r\n", ["mode=c"], "expected one of a|b"),
        ("run_dir: r\n", ["sizes=[1, x]"], "train.sizes[1]: expected an integer"),
        ("run_dir: r\nbogus: 1\n", [], "unknown top-level key 'bogus'"),
        ("seed: 1\n", [], "missing required key 'run_dir'"),
        ("run_dir: [\n", [], "is not valid YAML"),
        ("run_dir: r\n", ["nokey"], "expected key=value"),
    ],
)
def test_bad_configs_name_the_key(tmp_path, text, overrides, msg):
    with pytest.raises(ConfigError) as e:
        load_config(Demo, write(tmp_path, text), overrides, "train")
    assert msg in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(Demo, tmp_path / "nope.yaml", [], "train")


def test_override_values_are_yaml():
    assert parse_override("a=1") == ("a", 1)
    assert parse_override("a=[1,2]") == ("a", [1, 2])
    assert parse_override("a=x=y") == ("a", "x=y")
