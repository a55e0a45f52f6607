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

from dlrrec.config import ConfigError, DataError, to_dict

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


# Config keys that say where, how or whether to write, never what: left out of each
# stage's fingerprint, so that e.g. moving the data folder, a cache folder, a batch size
# or another Redis never invalidates a finished output.  `section.key` is a key inside a
# nested section (features' `llm:` and `images:`; answers and captions are cached by
# model and input, so their cache folder, concurrency or batch size change nothing).
NOT_FINGERPRINTED: dict[str, tuple[str, ...]] = {
    "features": (
        "run_dir", "overwrite", "raw_dir", "embed_cache_dir", "workers",
        "llm.cache_dir", "llm.api_key_env", "llm.max_concurrency", "llm.timeout_s", "llm.max_retries",
        "images.cache_dir", "images.batch_size", "images.device",
    ),
    "similarity": (
        "run_dir", "overwrite", "memory_budget_gb", "kernel",
        "redis_url", "redis_prefix", "redis_grace_s",
    ),
    "train": (
        "run_dir", "overwrite", "device", "log_every",
        "resume", "checkpoint_every_steps", "stop_after_epoch", "stop_after_step",
        "tensorboard", "progress_bar", "score_test",
    ),
}  # fmt: skip
# Keys newer than outputs already out there: left out of the fingerprint at these values
# (their defaults), so those outputs keep their fingerprints and stay reusable.
NEWER_DEFAULTS: dict[str, dict[str, Any]] = {
    "features": {
        "source": "raw", "files": None, "columns": None, "rating_range": None,
        "max_categories": 11, "on_bad_rows": "error", "llm": None, "images": None,
        "rating_stats": False, "rating_stats_folds": 5, "rating_recent": 0, "rating_bias": False,
        "history_bags": False, "history_folds": 5, "history_max_len": 100,
        "temporal_history": "causal", "history_scheme": "folds",
    },
    "similarity": {},
    "train": {
        "extra_negatives": 0, "logq_correction": False, "infonce_chunk_size": 128,
        "mask_positive_set": False, "rating_weight": 0.0, "lr_decay": 1.0,
        "history_tables": "own", "val_every_steps": 0, "variant": "full", "id_dropout": 0.0,
        "data_lanes": 8,
    },
}  # fmt: skip


def fingerprinted_config(cfg: Any, stage: str) -> dict[str, Any]:
    """The keys of `stage`'s config dataclass that shape its output, as a plain dict:
    less `NOT_FINGERPRINTED[stage]` and less `NEWER_DEFAULTS[stage]` at their defaults."""
    d = to_dict(cfg)
    for key in NOT_FINGERPRINTED[stage]:
        section, _, name = key.rpartition(".")
        node = d.get(section) if section else d
        if isinstance(node, dict):  # a section that is off (None) has nothing to drop
            node.pop(name, None)
    for key, default in NEWER_DEFAULTS[stage].items():
        if key in d and d[key] == default:
            d.pop(key)
    return d


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


def reusable_record(path: Path, fingerprint: str, overwrite: bool) -> dict[str, Any] | None:
    """The one reuse-or-refuse check on an earlier output's record (`_meta.json`, the
    trainer's `report.json`).

    Returns the record when its fingerprint is `fingerprint` (reuse the output), None
    when there is no record or `overwrite` allows replacing the output.

    Raises:
        ConfigError: the record is of a different fingerprint and `overwrite` is false.
    """
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError:
        record = {}
    if isinstance(record, dict) and record.get("fingerprint") == fingerprint:
        return record
    if overwrite:
        return None
    raise _different_output(path.parent)


def _different_output(folder: Path) -> ConfigError:
    return ConfigError(
        f"{folder}: holds an output of a different config, input or code version; "
        "pass overwrite=true to replace it or choose another run_dir"
    )


def existing_output(final: Path, fingerprint: str, overwrite: bool) -> bool:
    """Decide what to do with an existing output folder.

    Returns True when a complete output with the same fingerprint exists (reuse it).
    Returns False when the folder is absent or `overwrite` allows replacing it.

    Raises:
        ConfigError: the folder holds a different run (or no `_meta.json`: an unknown
            one) and `overwrite` is false.
    """
    if not final.exists():
        return False
    meta_path = final / "_meta.json"
    if reusable_record(meta_path, fingerprint, overwrite) is not None:
        return True
    if overwrite or meta_path.is_file():
        return False
    raise _different_output(final)


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
