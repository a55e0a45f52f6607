"""Typed schemas of the stages' records: each `_meta.json` and the trainer's report.

The writers build these dicts (features/main.py, similarity/main.py, trainer/main.py,
serve/export.py); the readers load them through `read_*` here, so a key's name and
type are written down once. Keys marked `NotRequired` are missing from outputs of
older versions; readers `.get()` them. Only the keys readers use are typed in detail;
nested records the stages only copy around stay `dict[str, Any]`.
"""

# No `from __future__ import annotations` here: TypedDict tells `NotRequired` keys
# apart at runtime only from evaluated annotations (the schema tests read them).
import json
from pathlib import Path
from typing import Any, NotRequired, TypedDict, cast

from dlrrec.artifacts import read_meta
from dlrrec.config import DataError


class SparseFeatureMeta(TypedDict):
    vocab_size: int
    multi_valued: bool
    max_len: int
    ids_of: NotRequired[str]  # history bags: the id feature whose ids the bag holds
    mean_len: NotRequired[dict[str, float]]  # history bags: split -> mean bag length


class KeyedContentMeta(TypedDict):
    key: str  # the examples' per-row key column: entity * slots + slot
    file: str  # the per-(entity, slot) table, relative to features/
    slots: int
    scheme: str  # out_of_fold | earlier_blocks
    entity: NotRequired[str]  # user (default: the profiles) | item (llm item summaries)


def keyed_entity(spec: KeyedContentMeta) -> str:
    """The entity whose id a keyed column's key holds (`key // slots`)."""
    return spec.get("entity", "user")


class FeaturesMeta(TypedDict):
    """`run_dir/features/_meta.json`."""

    schema_version: int
    fingerprint: str
    code_version: NotRequired[str]
    dataset: str
    split: str  # random | temporal
    split_fractions: list[float]
    split_cutoffs: list[int] | None
    block_cuts: NotRequired[list[int] | None]  # the temporal split's time blocks (features/stats.py)
    temporal_history: NotRequired[str | None]  # causal | frozen (temporal split only)
    seed: int
    label_rule: str
    rows: dict[str, int]  # split -> rows
    positives: NotRequired[dict[str, int]]  # split -> label == 1 rows
    repeated_pairs: NotRequired[dict[str, int]]  # pairs, extra_rows
    train_rating: NotRequired[dict[str, float]]  # mean, std
    n_users: int
    n_items: int
    id_order: dict[str, str]  # entity -> how dense ids are ordered
    sparse_features: dict[str, SparseFeatureMeta]
    vocab: dict[str, Any]
    sparse_oov: NotRequired[dict[str, Any]]  # the OOV id and its counts
    categories: NotRequired[dict[str, Any]]  # max_categories, truncated_lists
    dense_features: list[str]
    dense_stats: dict[str, Any]
    price: NotRequired[dict[str, Any]]
    skipped_rows: NotRequired[dict[str, Any]]  # policy and counts of bad rows
    content: dict[str, list[str]]  # entity -> its vector columns
    row_content: NotRequired[list[str]]  # vector columns stored per row (older builds only)
    keyed_content: NotRequired[dict[str, KeyedContentMeta]]
    llm: NotRequired[dict[str, Any]]  # the llm section's usage (features/content.py)
    images: NotRequired[dict[str, Any]]  # the images section's caption counts
    content_dim: int
    text_model: str
    input_hashes: dict[str, str]  # raw file -> sha256
    config: dict[str, Any]
    seconds: float  # the build's wall time


class SimilarityInputMeta(TypedDict):
    source: str
    fingerprint: str
    rows_read: int


class SimilarityTableMeta(TypedDict):
    pairs: int
    anchors: int
    anchors_with_neighbors: int
    coverage: float
    W: int
    work_estimate: float
    parts: int
    parts_reused: int
    rank_seconds: list[float]


class SimilarityMeta(TypedDict):
    """`run_dir/similarity/_meta.json`."""

    schema_version: int
    fingerprint: str
    code_version: str
    input: SimilarityInputMeta
    ids: dict[str, str]  # entity -> dense | original | index (see ids/)
    params: dict[str, Any]
    config: dict[str, Any]
    graph: dict[str, int]
    item_item: SimilarityTableMeta
    user_user: SimilarityTableMeta
    W: int
    world_size: int
    seconds: float
    phase_seconds: dict[str, float]
    rank_peak_rss_mb: list[float]
    rank_cpu_seconds: list[float]


class TrainReport(TypedDict):
    """`run_dir/train/report.json` (no schema_version: the fingerprint pins it)."""

    dataset: str
    split: str | None
    temporal_history: str | None
    seed: int
    world_size: int
    device: str
    backend: str
    best_epoch: int
    best_step: int
    best_checkpoint: str
    selection_metric: str
    sharding_plan: dict[str, Any]
    sparse_optimizer: str
    val: dict[str, Any]
    test: dict[str, Any] | None  # None: sealed (score_test=false)
    throughput: dict[str, float]
    losses: dict[str, float] | None
    variant: dict[str, Any]
    steps: int
    resumed_from: list[int]
    seconds: float
    fingerprint: str
    code_version: str
    inputs: NotRequired[dict[str, str | None]]  # stage -> fingerprint trained on
    config: dict[str, Any]


class ExportManifest(TypedDict):
    """`run_dir/export/_meta.json`."""

    schema_version: int
    fingerprint: str
    export_version: int
    train_fingerprint: str
    features_fingerprint: str
    checkpoint: str
    format: str
    needs_torchrec: bool
    score: str
    n_users: int
    n_items: int
    split: str | None
    recipe: dict[str, Any]
    metrics: dict[str, Any]
    train_config: dict[str, Any]
    versions: dict[str, str]


def read_features_meta(stage_dir: str | Path) -> FeaturesMeta:
    """`features/_meta.json` (fails naming the file, see `read_meta`)."""
    return cast(FeaturesMeta, read_meta(stage_dir))


def read_similarity_meta(stage_dir: str | Path) -> SimilarityMeta:
    """`similarity/_meta.json` (fails naming the file, see `read_meta`)."""
    return cast(SimilarityMeta, read_meta(stage_dir))


def read_export_manifest(stage_dir: str | Path) -> ExportManifest:
    """`export/_meta.json` (fails naming the file, see `read_meta`)."""
    return cast(ExportManifest, read_meta(stage_dir))


def read_train_report(path: str | Path) -> TrainReport:
    """`train/report.json`, or fail naming the file."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: missing; run `dlrrec train` first")
    try:
        return cast(TrainReport, json.loads(p.read_text()))
    except json.JSONDecodeError:
        raise DataError(f"{p}: not valid JSON") from None


def entity_count(meta: FeaturesMeta, entity: str) -> int:
    """`n_users` or `n_items` of a features build, by entity name ("user" / "item")."""
    return int(meta["n_users"] if entity == "user" else meta["n_items"])
