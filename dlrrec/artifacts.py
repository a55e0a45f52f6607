"""Artifact folders: atomic writes, `_meta.json`, content hashes and reuse checks.

Every stage writes into a temp folder next to its final folder and renames it into
place only when complete, so a crash never leaves a half-written table behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dlrrec.config import ConfigError, DataError

SCHEMA_VERSION = 1


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """A stable hash of a JSON-able object (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def hash_tree(paths: list[Path]) -> str:
    """One hash over several files (by name and content), for `input_hashes`."""
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def write_json_atomic(path: str | Path, obj: Any) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, p)


def read_meta(stage_dir: str | Path) -> dict[str, Any]:
    """Read `STAGE/_meta.json`, or fail naming the file and what to run first."""
    p = Path(stage_dir) / "_meta.json"
    if not p.is_file():
        raise DataError(f"{p}: missing; run the stage that writes {Path(stage_dir).name}/ first")
    try:
        meta = json.loads(p.read_text())
    except json.JSONDecodeError:
        raise DataError(f"{p}: not valid JSON") from None
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise DataError(
            f"{p}: schema_version {meta.get('schema_version')!r}, expected {SCHEMA_VERSION}"
        )
    return meta


def existing_output(final: Path, fingerprint: str, overwrite: bool) -> bool:
    """Decide what to do with an existing output folder.

    Returns True when a complete output with the same fingerprint exists (reuse it).
    Returns False when the folder is absent or `overwrite` allows replacing it.

    Raises:
        ConfigError: the folder holds a different run and `overwrite` is false.
    """
    meta_path = final / "_meta.json"
    if not final.exists():
        return False
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError:
            meta = {}
        if meta.get("fingerprint") == fingerprint:
            return True
    if overwrite:
        return False
    raise ConfigError(
        f"{final}: holds an output of a different config, input or code version; "
        "pass overwrite=true to replace it or choose another run_dir"
    )


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a temp folder beside `final`; on success replace `final` with it.

    On an exception the temp folder is removed and `final` is left as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish_dir(tmp, final)


def publish_dir(tmp: Path, final: Path) -> None:
    """Move the complete folder `tmp` to `final`, replacing what was there (two renames;
    the old folder is deleted only once the new one is in place)."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
