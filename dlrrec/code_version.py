"""The code version in every stage's fingerprint: a hash of the sources that shape its output.

A stage's output is a function of its config, its inputs and its code. The first two
were always in the fingerprint; without the third, a rerun after a code change reused an
artifact the old code wrote, and grids paired runs of different commits. The version is
a hash of source files, not a git commit: it is the same in a git checkout, a fresh clone,
an installed wheel and the Docker image (which has no `.git`). A README edit, a test, a
benchmark or another stage's code does not invalidate an artifact.

Each stage hashes its own package's `*.py` files (recursively), less the modules that
cannot change what it writes (listed in `NOT_SHAPING`, with why). Stages downstream
need not hash upstream code: their fingerprint holds the upstream artifact's fingerprint,
which holds that code's version. See docs/evaluation.md.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
from pathlib import Path

# stage -> modules of its package (paths relative to it) that shape nothing it writes
NOT_SHAPING: dict[str, tuple[str, ...]] = {
    # download and raw-schema conversion: their output is the raw tables, which the
    # features fingerprint already identifies by content hash
    "features": ("fetch.py", "movielens.py"),
    # serving (Redis export and reads, the source-id maps they use) and the tests'
    # plain-Python reference
    "similarity": ("id_maps.py", "redis_export.py", "redis_read.py", "redis_store.py", "reference.py"),
    # PNG rendering of a finished run's metrics
    "trainer": ("plots.py",),
}
PACKAGE_OF = {"features": "features", "similarity": "similarity", "train": "trainer", "trainer": "trainer"}


def package_root(package: str) -> Path:
    return Path(importlib.import_module(package).__file__ or "").parent


def stage_sources(root: Path, skip: tuple[str, ...] = ()) -> list[Path]:
    """The `*.py` files under `root` (recursively) less `skip` (paths relative to it), sorted."""
    return sorted(
        p for p in root.rglob("*.py")
        if p.relative_to(root).as_posix() not in skip and "__pycache__" not in p.parts
    )  # fmt: skip


def sources_hash(root: Path, skip: tuple[str, ...] = ()) -> str:
    """sha256 over (path relative to `root`, content) of `stage_sources(root, skip)`."""
    h = hashlib.sha256()
    for p in stage_sources(root, skip):
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        h.update(p.read_bytes() + b"\0")
    return h.hexdigest()


@functools.cache
def code_version(stage: str) -> str:
    """`stage`'s code version: the hash of its package's sources that shape its output."""
    package = PACKAGE_OF[stage]
    return sources_hash(package_root(package), NOT_SHAPING[package])
