"""Reading `RUN/export/` back: the TorchScript model, the id maps and the manifest.

Nothing here needs TorchRec or this repository's trainer: a server in another codebase
does the same with `torch.jit.load` and two Parquet joins.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from dlrrec.config import DataError
from dlrrec.meta import ExportManifest, FeaturesMeta


@dataclass
class Export:
    """A loaded export: `model(user_rows, item_rows) -> logits`, id maps and manifest."""

    root: Path
    manifest: ExportManifest
    model: torch.jit.ScriptModule
    users: pa.Table  # user, row
    items: pa.Table  # item, row (, title)

    @property
    def cold(self) -> bool:
        return bool(self.manifest["recipe"]["cold_rows"])

    def rows(self, entity: str, ids: pa.Array, unknown: str, where: str) -> np.ndarray:
        """Source ids -> rows; an unknown id is an error or (`unknown=cold`) row n."""
        table = self.users if entity == "user" else self.items
        ids = pc.cast(ids, pa.string())
        idx = pc.index_in(ids, value_set=table.column(entity))
        missing = np.flatnonzero(np.asarray(idx.is_null()))
        if missing.size and (unknown != "cold" or not self.cold):
            hint = (
                ""
                if unknown == "cold"
                else "; pass unknown=cold to score it with the cold-start row"
                if self.cold
                else "; the model has no cold-start row (train with train.id_dropout > 0)"
            )
            raise DataError(f"{where}: unknown {entity} id {ids[int(missing[0])].as_py()!r}{hint}")
        return np.asarray(idx.fill_null(table.num_rows)).astype(np.int64)

    def logits(self, users: np.ndarray, items: np.ndarray, batch_size: int) -> np.ndarray:
        out = []
        with torch.no_grad():
            for a in range(0, users.size, batch_size):
                u = torch.from_numpy(users[a : a + batch_size])
                i = torch.from_numpy(items[a : a + batch_size])
                out.append(self.model(u, i).numpy())
        return np.concatenate(out) if out else np.zeros(0, np.float32)


def read_export(run_dir: str | Path) -> Export:
    """Load `run_dir/export/`; refuse one built from other features than `run_dir/features/`."""
    root = Path(run_dir) / "export"
    mpath = root / "_meta.json"
    if not mpath.is_file():
        raise DataError(f"{mpath}: missing; run `dlrrec export` first")
    manifest = cast(ExportManifest, json.loads(mpath.read_text()))
    fmeta = Path(run_dir) / "features" / "_meta.json"
    if fmeta.is_file():
        fp = cast(FeaturesMeta, json.loads(fmeta.read_text())).get("fingerprint")
        if fp != manifest.get("features_fingerprint"):
            raise DataError(
                f"{root}: exported from features {str(manifest.get('features_fingerprint'))[:12]}, but "
                f"{fmeta} is {str(fp)[:12]}; rerun `dlrrec export overwrite=true`"
            )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = torch.jit.load(str(root / "model.pt"))
    model.eval()
    return Export(
        root,
        manifest,
        model,
        pq.read_table(root / "users.parquet"),
        pq.read_table(root / "items.parquet"),
    )
