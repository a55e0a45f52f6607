"""Strict YAML configs: one typed dataclass per job, `key=value` overrides, no surprises.

A config file holds common top-level keys (`run_dir`, `seed`, `dataset`) plus one
section per stage (`data`, `features`, `similarity`, `train`, `pipeline`).  A stage
job validates the *whole* file (so a typo anywhere is caught before hours of work),
then builds its own section with the common keys merged in.

Unknown keys and wrong types are errors (the two checks of nanoGPT's configurator).
Only `build_*` functions and `run()` entry points read configs; modules get flat,
typed arguments.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml


class DlrrecError(Exception):
    """A user-facing error: printed as one line by the CLI, exit code 2."""


class ConfigError(DlrrecError):
    """A bad config file, key, value or flag."""


class DataError(DlrrecError):
    """A bad input table: names the file, column and (where known) the row."""


COMMON_KEYS = ("run_dir", "seed", "dataset")
SECTIONS = ("features", "similarity", "train", "pipeline", "serve")
FLOAT_LITERAL = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")  # exponent forms YAML 1.1 leaves as str

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`; return it (ints widen to floats).

    Raises:
        ConfigError: naming `where` and the expected type.
    """
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        if len(errors) == 1:  # `X | None`: X's own message (e.g. a nested section's bad key)
            raise ConfigError(errors[0])
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            choices = "|".join(str(a) for a in get_args(tp))
            raise ConfigError(f"{where}: expected one of {choices}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_tp,) = get_args(tp)
        return [coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        k_tp, v_tp = get_args(tp)
        return {coerce(k, k_tp, where): coerce(v, v_tp, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        # YAML 1.1 (PyYAML) reads 1e-5 (no dot) as a string; it is a number to anyone writing it
        if isinstance(value, str) and FLOAT_LITERAL.fullmatch(value.strip()):
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return build_dataclass(tp, value, where)
    raise ConfigError(f"{where}: unsupported config type {_type_name(tp)}")


def build_dataclass(cls: type[T], values: dict[str, Any], where: str) -> T:
    """Build `cls` from a mapping, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r} (known keys: {', '.join(sorted(fields))})"
        )
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = coerce(value, hints[name], f"{where}.{name}" if where else name)
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{where or 'config'}: missing required key {missing[0]!r}")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` -> (key, YAML-parsed value). `a.b=1` addresses a section key."""
    if "=" not in text or text.startswith("="):
        raise ConfigError(f"override {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with one-line errors for a missing or malformed file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config {p}: no such file")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"--config {p}:{line} is not valid YAML") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config {p}: expected a mapping at the top level")
    return data


def load_raw(config: str | Path | None, overrides: list[str], section: str | None) -> dict[str, Any]:
    """Merge a config file with overrides.

    With `section` set, a bare `key=value` goes to that section unless `key` is a
    common key; `section.key=value` always works.
    """
    raw: dict[str, Any] = read_yaml(config) if config else {}
    unknown = sorted(k for k in raw if k not in COMMON_KEYS and k not in SECTIONS)
    if unknown:
        raise ConfigError(
            f"--config {config}: unknown top-level key {unknown[0]!r} "
            f"(expected {', '.join(COMMON_KEYS + SECTIONS)})"
        )
    for sec in SECTIONS:
        if sec in raw and raw[sec] is not None and not isinstance(raw[sec], dict):
            raise ConfigError(f"--config {config}: section {sec!r} must be a mapping")
    for text in overrides:
        key, value = parse_override(text)
        if "." in key:
            sec, sub = key.split(".", 1)
            if sec not in SECTIONS and section is not None:
                sec, sub = section, key  # `llm.base_url=...`: a nested key of the section
            if sec not in SECTIONS:
                raise ConfigError(f"override {text!r}: unknown section {sec!r}")
            _set_nested(raw, [sec, *sub.split(".")], value, text)
        elif key in COMMON_KEYS or section is None:
            raw[key] = value
        else:
            raw.setdefault(section, {})
            if raw[section] is None:
                raw[section] = {}
            raw[section][key] = value
    return raw


def _set_nested(raw: dict[str, Any], path: list[str], value: Any, text: str) -> None:
    """raw[a][b]...[z] = value, creating mappings on the way (`features.llm.folds=3`)."""
    node = raw
    for part in path[:-1]:
        if node.get(part) is None:
            node[part] = {}
        if not isinstance(node[part], dict):
            raise ConfigError(f"override {text!r}: {part!r} is not a section")
        node = node[part]
    node[path[-1]] = value


def section_values(raw: dict[str, Any], section: str) -> dict[str, Any]:
    """The common keys merged into one section's mapping (the section wins)."""
    values = {k: raw[k] for k in COMMON_KEYS if k in raw}
    values.update(raw.get(section) or {})
    return values


def load_config(
    cls: type[T], config: str | Path | None, overrides: list[str], section: str
) -> T:
    """Load and validate one stage's config, e.g. `load_config(TrainConfig, path, ["epochs=3"], "train")`."""
    raw = load_raw(config, overrides, section)
    return build_dataclass(cls, section_values(raw, section), section)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain dict of a config dataclass, for `_meta.json` and `config.yaml`."""
    return dataclasses.asdict(cfg)
