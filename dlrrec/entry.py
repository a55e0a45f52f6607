"""The shared shape of every job's `main(argv)`: parse, load a strict config, run.

A `DlrrecError` (bad config, flag or input table) becomes one line on stderr and
exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import re
import sys
import textwrap
import typing
from collections.abc import Callable
from typing import Any, Literal, NoReturn, TypeVar

from dlrrec.config import DlrrecError, load_config

T = TypeVar("T")


class ArgParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit 2; `--help` exits 0."""

    def error(self, message: str) -> NoReturn:
        fail(self.prog, message)


def fail(prog: str, message: str) -> NoReturn:
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _arg_docs(cls: type) -> dict[str, str]:
    """`name: text` entries of a Google-style `Args:` docstring section (continuation
    lines joined; `a, b: text` documents both)."""
    doc = inspect.getdoc(cls) or ""
    m = re.search(r"^Args:\n((?:[ \t]+.*\n?|\n)*)", doc, re.MULTILINE)
    if not m:
        return {}
    out: dict[str, str] = {}
    names: list[str] = []
    for line in m.group(1).splitlines():
        entry = re.match(r"^    ([A-Za-z_][\w, ]*):\s*(.*)$", line)
        if entry:
            names = [n.strip() for n in entry.group(1).split(",")]
            for n in names:
                out[n] = entry.group(2).strip()
        elif line.strip() and names:
            for n in names:
                out[n] += " " + line.strip()
    return out


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "|".join(str(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def config_reference(cfg_cls: type, section: str) -> str:
    """Every key of a config dataclass: type, default and its docstring text."""
    lines = [
        f"config keys of section `{section}:` (override with {section}.KEY=VALUE; "
        "the stage's own job also takes KEY=VALUE):"
    ]
    _key_lines(cfg_cls, "", lines)
    return "\n".join(lines)


def _key_lines(cfg_cls: type, prefix: str, lines: list[str]) -> None:
    docs = _arg_docs(cfg_cls)
    hints = typing.get_type_hints(cfg_cls)
    for f in dataclasses.fields(cfg_cls):
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(f.default_factory())
        else:
            default = "required"
        lines.append(f"  {prefix}{f.name} ({_type_name(hints[f.name])}, default {default})")
        if docs.get(f.name):
            lines += textwrap.wrap(
                docs[f.name], 88, initial_indent=" " * 6, subsequent_indent=" " * 6
            )
        # A nested section (e.g. features.llm): its keys, as `llm.KEY`.
        for arg in typing.get_args(hints[f.name]) or (hints[f.name],):
            if dataclasses.is_dataclass(arg) and isinstance(arg, type):
                _key_lines(arg, f"{prefix}{f.name}.", lines)


def job_parser(prog: str, description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    p = ArgParser(
        prog=prog,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="YAML config (optional when overrides give every required key)")
    p.add_argument(
        "overrides", nargs="*", help="key=value overrides, e.g. epochs=3 or train.epochs=3"
    )
    return p


def run_job(
    prog: str,
    description: str,
    cfg_cls: type[T],
    section: str,
    run: Callable[[T], Any],
    argv: list[str] | None,
) -> int:
    """Parse `--config` + overrides into `cfg_cls` and call `run(cfg)`."""
    args = job_parser(prog, description, config_reference(cfg_cls, section)).parse_args(argv)
    with user_errors(prog):
        cfg = load_config(cfg_cls, args.config, args.overrides, section)
        run(cfg)
    return 0


class user_errors:
    """Context manager: a DlrrecError becomes `prog: error: ...` and exit 2."""

    def __init__(self, prog: str) -> None:
        self.prog = prog

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> Literal[False]:
        if exc is not None and isinstance(exc, DlrrecError):
            _record_for_torchelastic(exc)
            fail(self.prog, str(exc))
        return False


def _record_for_torchelastic(exc: BaseException) -> None:
    """Under torchrun, leave the error where the agent looks for a worker's error.

    torch's `@record` records exceptions but not the SystemExit(2) that a user error
    becomes, so without this torchrun's failure summary (and `dlrrec pipeline`, which
    reads it back) would not know why the worker exited.
    """
    if os.environ.get("TORCHELASTIC_ERROR_FILE"):
        from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

        ErrorHandler().record_exception(exc)
