"""The shared shape of every job's `main(argv)`: parse, load a strict config, run.

A `DlrrecError` (bad config, flag or input table) becomes one line on stderr and
exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any, Literal, NoReturn, TypeVar

from launch.config import DlrrecError, load_config

T = TypeVar("T")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        fail(self.prog, message)


def fail(prog: str, message: str) -> NoReturn:
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def job_parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description=description)
    p.add_argument("--config", help="YAML config (optional when overrides give every required key)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. epochs=3 or train.epochs=3")
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
    args = job_parser(prog, description).parse_args(argv)
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
            fail(self.prog, str(exc))
        return False
