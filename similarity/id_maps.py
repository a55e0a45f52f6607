"""The source's ids of the similarity tables' ids, for exports (Redis); Parquet reads only.

The pair tables keep the ids the kernel and the trainer use: the features stage's dense
ids, or the original integers of an `input=` table, or dense indexes of its string ids.
Exports name entities by the source's ids (DESIGN.md), through `read_id_map`.  This
module shapes no SWING output, so it is outside the SWING code version
(`dlrrec.code_version.NOT_SHAPING`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dlrrec.artifacts import sha256_file
from dlrrec.config import DataError
from dlrrec.meta import SimilarityMeta, read_features_meta

ENTITY = {"item_item": "item", "user_user": "user"}  # whose ids a table holds


@dataclass
class IdMap:
    """How one entity kind's table ids become the source's ids.

    names: source id (string) by table id, or None when the tables already hold the
        source's ids (an `input=` table with integer ids).
    order: how the source ids sort, i.e. how the tables broke score ties:
        "integer" (int64 ids), "numeric" (digit strings by length, then text) or
        "lexicographic".
    """

    names: pa.Array | None
    order: str


def read_id_map(stage: Path, meta: SimilarityMeta, entity: str) -> IdMap:
    """The id map of `entity` ("user" | "item") for the finished SWING output `stage`.

    Features input: the tables hold the features stage's dense ids, and
    `run_dir/features/entities/{users,items}.parquet` lists the source id of each; that
    artifact must be the one the tables were built from (same fingerprint).  `input=`
    with string ids: `stage/ids/`.  `input=` with integer ids: the tables hold them.
    """
    how = meta.get("ids", {}).get(entity)
    if how == "original":
        return IdMap(None, "integer")
    if how == "index (see ids/)":
        return IdMap(_names(stage / "ids" / f"{entity}s.parquet", "index", "id"), "lexicographic")
    if how != "dense":
        raise DataError(f"{stage / '_meta.json'}: unknown ids.{entity} {how!r}")
    features = stage.parent / "features"
    fmeta = read_features_meta(features)
    built_from = meta.get("input", {}).get("fingerprint")
    if fmeta.get("fingerprint") != built_from:
        raise DataError(
            f"{features / '_meta.json'}: fingerprint {fmeta.get('fingerprint')!r} is not the "
            f"{built_from!r} that {stage} was built from; rerun `dlrrec similarity swing`"
        )
    path = features / "entities" / f"{entity}s.parquet"
    return IdMap(_names(path, f"{entity}_id", entity), str(fmeta["id_order"][entity]))


def _names(path: Path, index_col: str, id_col: str) -> pa.Array:
    """Column `id_col` of `path` ordered by `index_col`, which must be 0..n-1."""
    if not path.is_file():
        raise DataError(f"{path}: missing; it maps the similarity tables' ids to the source's ids")
    t = pq.read_table(path, columns=[index_col, id_col])
    index = t[index_col].to_numpy()
    if not np.array_equal(np.sort(index), np.arange(t.num_rows)):
        raise DataError(f"{path}: column {index_col!r} is not 0..{t.num_rows - 1}")
    names = t[id_col].combine_chunks().take(pa.array(np.argsort(index)))
    return names.cast(pa.string())


def read_item_titles(stage: Path, meta: SimilarityMeta) -> pa.Table | None:
    """(item, title) of the raw items table the tables' features were built from.

    None when there is none: an `input=` table, a source other than the raw-reviews
    tables, or an items table without titles.  An items table that changed since the
    features build (sha256 in the features `_meta.json`) is refused.
    """
    if meta.get("ids", {}).get("item") != "dense":
        return None
    fmeta = read_features_meta(stage.parent / "features")
    if fmeta.get("config", {}).get("source") != "raw":
        return None
    path = Path(fmeta["config"]["raw_dir"]) / "items.parquet"
    if not path.is_file() or "title" not in pq.read_schema(path).names:
        return None
    if sha256_file(path) != fmeta.get("input_hashes", {}).get("items.parquet"):
        raise DataError(f"{path}: changed since `dlrrec features build` read it; rebuild the features")
    t = pq.read_table(path, columns=["item", "title"])
    return t.filter(pc.is_valid(t["title"]))
