"""Worker processes for the CPU-bound steps of the streaming build, started on demand.

A small input (one chunk, one bucket) never starts a process: spawning costs about a
second, more than such a build.  Results never depend on the number of workers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any


class Workers:
    def __init__(self, n: int) -> None:
        self.n = n or os.cpu_count() or 1
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn, not fork: the parent may hold torch's threads (features.main imports it)
            self._pool = ProcessPoolExecutor(self.n, mp_context=get_context("spawn"))
        return self._pool

    def submit(self, fn: Callable[..., Any], *args: Any, first: bool) -> Any:
        """`fn(*args)` now when `first` (or with one worker), else a Future (see `result`)."""
        if first or self.n == 1:
            return fn(*args)
        return self._executor().submit(fn, *args)

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        todo = list(items)
        if len(todo) <= 1 or self.n == 1:
            return [fn(x) for x in todo]
        return list(self._executor().map(fn, todo))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def result(value: Any) -> Any:
    """The value of what `Workers.submit` returned."""
    return value.result() if isinstance(value, Future) else value
