"""Export a trained run for serving: `dlrrec export --config configs/movielens-100k.yaml`.

Writes RUN/export/ (atomically; reused when the run and features are unchanged):

    model.pt                  TorchScript `serve.model.ScoringModel`: plain PyTorch, no
                              TorchRec, no process group; logits of (user row, item row)
    users.parquet             id map: user (source id, string) -> row
    items.parquet             id map: item -> row (+ title when the raw items have one)
    seen.parquet              (user row, item row) of the training rows (`recommend`'s filter)
    embeddings/{users,items}.parquet   retrieval vectors by source id: the id-table row
                              and the tower outputs of each entity (its history-content
                              slots' too)
    _meta.json                manifest: fingerprints, the feature recipe, the trainer's
                              config and metrics, versions

The best checkpoint is read in ONE process without a process group, whatever world size
trained it: DCP reshards every saved shard into plain full-size tensors.
"""

from __future__ import annotations

import platform
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.elastic.multiprocessing.errors import record

from dlrrec.artifacts import (
    SCHEMA_VERSION,
    atomic_dir,
    existing_output,
    sha256_json,
    write_json_atomic,
)
from dlrrec.config import DataError
from dlrrec.entry import run_job
from dlrrec.meta import (
    ExportManifest,
    FeaturesMeta,
    TrainReport,
    entity_count,
    read_export_manifest,
    read_features_meta,
    read_similarity_meta,
    read_train_report,
)
from serve.config import ServeConfig
from serve.model import EntityInputs, ScoringModel, Towers
from serve.recipe import (
    MEAN_CHUNK_MEMBERS,
    READ_BATCH_ROWS,
    EntityArrays,
    bag_means,
    entity_arrays,
    entity_vectors,
    id_map,
    owner_of,
    row_chunks,
)
from trainer.checkpoint import SafeFileSystemReader, read_metadata_safely
from trainer.config import TrainConfig
from trainer.data import TOWER_COLUMNS, entity_store
from trainer.layout import history_sources, model_sparse, table_groups
from trainer.vector_store import VectorStore

EXPORT_VERSION = 2  # 2: history-content slots (train.history_content), rebuilt not reused
PREFIX = "model.model."  # DCP payload key "model" + DLRRECTrain.model


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The model tensors of a DCP checkpoint as plain full-size tensors, in this process alone."""
    md = read_metadata_safely(path)
    state = {
        k: torch.empty(tuple(v.size), dtype=v.properties.dtype)  # type: ignore[union-attr]
        for k, v in md.state_dict_metadata.items()
        if k.startswith(PREFIX)
    }
    with warnings.catch_warnings():  # "no process group: loading in one process" is the point
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(state, storage_reader=SafeFileSystemReader(str(path)), no_dist=True)
    return {k[len(PREFIX) :]: v for k, v in state.items()}


def read_run(run_dir: Path) -> tuple[TrainReport, TrainConfig, Path]:
    """(report.json, the trainer's config, the best checkpoint folder)."""
    report_path = run_dir / "train" / "report.json"
    if not report_path.is_file():
        raise DataError(f"{report_path}: missing; run `dlrrec train` to completion first")

    report = read_train_report(report_path)
    tcfg = TrainConfig(**report["config"])
    ckpt = run_dir / "train" / "checkpoints" / Path(report["best_checkpoint"]).name
    if not ckpt.is_dir():
        raise DataError(f"{ckpt}: the best checkpoint named in {report_path} is missing")
    return report, tcfg, ckpt


def model_features(
    tcfg: TrainConfig, meta: FeaturesMeta
) -> tuple[list[str], list[str], list[tuple[str, str]]]:
    """(sparse names, dense names, towers) in the trainer's order (trainer/data.py, main.py);
    `train.history_tables: none` leaves the history bags out of the sparse features."""
    spec = meta["sparse_features"]
    sparse = model_sparse(spec, list(spec), tcfg.history_tables)
    dense = list(meta["dense_features"])
    if tcfg.variant == "biased_mf":
        return ["user_id", "item_id"], [], []
    towers = [t for m in tcfg.modalities for t in TOWER_COLUMNS[m]] if tcfg.uses_content else []
    for _, col in towers:
        if col in meta.get("row_content", ()):
            raise DataError(
                f"features/_meta.json: tower column {col!r} is per row (row_content); `dlrrec export` serves per-entity vectors only"
            )
    return sparse, dense, towers


def history_slots(
    tcfg: TrainConfig, meta: FeaturesMeta, towers: list[tuple[str, str]]
) -> list[tuple[str, int]]:
    """(bag, source tower) of each `train.history_content` slot, as the trainer pairs
    them (`trainer.layout.history_sources`). None without towers (the trainer ignores
    the option there)."""
    if not towers:
        return []
    return history_sources(meta["sparse_features"], towers, tcfg.history_content, "features/_meta.json")


def mlp_from(tensors: dict[str, torch.Tensor], prefix: str, last_activation: bool) -> nn.Sequential:
    """The trainer's `mlp` (trainer/model.py) in eval mode: Linear layers from the checkpoint."""
    idx = sorted({int(k[len(prefix) :].split(".")[0]) for k in tensors if k.startswith(prefix)})
    layers: list[nn.Module] = []
    for n, i in enumerate(idx):
        w, b = tensors[f"{prefix}{i}.weight"], tensors[f"{prefix}{i}.bias"]
        lin = nn.Linear(w.shape[1], w.shape[0])
        lin.weight.data.copy_(w)
        lin.bias.data.copy_(b)
        layers.append(lin)
        if n < len(idx) - 1 or last_activation:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def build_tables(
    tcfg: TrainConfig, meta: FeaturesMeta, sparse: list[str], tensors: dict[str, torch.Tensor]
) -> tuple[list[nn.EmbeddingBag], list[int], list[str]]:
    """(EmbeddingBags, table of each feature, table names) as `trainer.main.build_tables` groups them."""
    spec = meta["sparse_features"]
    by_table = table_groups(spec, sparse, tcfg.history_tables)
    bags, names = [], list(by_table)
    for table, feats in by_table.items():
        key = f"sparse_arch.embedding_bag_collection.embedding_bags.t_{table}.weight"
        if key not in tensors:
            raise DataError(f"checkpoint: no table t_{table}; it was trained on other features")
        mode = "mean" if any(spec[f].get("multi_valued") for f in feats) else "sum"
        bags.append(nn.EmbeddingBag.from_pretrained(tensors[key].float(), freeze=True, mode=mode))
    return (
        bags,
        [names.index(next(t for t, fs in by_table.items() if f in fs)) for f in sparse],
        names,
    )


def tower_outputs(
    towers_mod: Towers,
    towers: list[tuple[str, str]],
    entity: str,
    vectors: dict[str, np.ndarray],
    shape: tuple[int, int],
) -> torch.Tensor:
    """[n + 1, Tk, D] outputs of `entity`'s towers over its frozen vectors (trainer tower
    order); `shape` = (n + 1, D)."""
    outs = []
    with torch.no_grad():
        for t, (e, col) in enumerate(towers):
            if e == entity:
                outs.append(towers_mod(torch.from_numpy(vectors[col].astype(np.float32)), t))
    return torch.stack(outs, dim=1) if outs else torch.zeros(shape[0], 0, shape[1])


def history_outputs(
    towers_mod: Towers,
    slots: list[tuple[str, int]],
    history: dict[str, tuple[np.ndarray, np.ndarray]],
    stores: list[VectorStore],
    shape: tuple[int, int],
) -> torch.Tensor:
    """[n + 1, Hk, D]: for each slot whose bag is in `history` (the owner's CSR bags, row
    n empty), every row's mean member vector through the slot's source tower; `stores`
    holds each slot's member vectors, `shape` = (n + 1, D). Owners go in bounded chunks."""
    outs = []
    with torch.no_grad():
        for (bag, src), store in zip(slots, stores):
            if bag not in history:
                continue
            offsets, values = history[bag]
            out = torch.empty(shape)
            for lo, hi in row_chunks(offsets, READ_BATCH_ROWS, MEAN_CHUNK_MEMBERS):
                x = bag_means(offsets, values, lo, hi, store)
                out[lo:hi] = towers_mod(torch.from_numpy(x.astype(np.float32)), src)
            outs.append(out)
    return torch.stack(outs, dim=1) if outs else torch.zeros(shape[0], 0, shape[1])


def concat_bags(
    bags: list[tuple[np.ndarray, np.ndarray]], rows: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """K CSR arrays over the same `rows` -> offsets [K, rows + 1] into one values array."""
    offsets, values, shift = [], [], 0
    for off, val in bags:
        offsets.append(off + shift)
        values.append(val)
        shift += val.size
    if not bags:
        return torch.zeros(0, rows + 1, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return torch.from_numpy(np.stack(offsets)), torch.from_numpy(np.concatenate(values))


def tower_layers(tensors: dict[str, torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The towers' per-layer weights [T, a, b] and biases [T, 1, b] as the interaction sees
    them: a linear `tower_map` (train.tower_dim < D) is folded into the last layer,
    x W + b then (.) M + c = x (W M) + (b M + c), so serving needs no extra layer."""
    n = len([k for k in tensors if k.startswith("projection_arch.weights.")])
    weights = [tensors[f"projection_arch.weights.{i}"] for i in range(n)]
    biases = [tensors[f"projection_arch.biases.{i}"] for i in range(n)]
    if n and "tower_map.weights.0" in tensors:
        m, c = tensors["tower_map.weights.0"], tensors["tower_map.biases.0"]
        weights[-1], biases[-1] = torch.bmm(weights[-1], m), torch.baddbmm(c, biases[-1], m)
    return weights, biases


def entity_inputs(
    features: Path,
    meta: FeaturesMeta,
    towers: list[tuple[str, str]],
    slots: list[tuple[str, int]],
    arrays: dict[str, EntityArrays],
    towers_mod: Towers,
    d: int,
) -> dict[str, EntityInputs]:
    """Each kind's `EntityInputs`: its bags, dense values, and its towers' outputs followed
    by the outputs of the history-content slots it owns."""
    dim = int(meta["content_dim"])
    stores = [entity_store(features, meta, *towers[src]) for _, src in slots]
    inputs = {}
    for e in ("user", "item"):
        n = entity_count(meta, e)
        vecs = {col: entity_vectors(features, e, col, n, dim) for x, col in towers if x == e}
        offsets, values = concat_bags(arrays[e].bags, n + 1)
        out = torch.cat(
            [
                tower_outputs(towers_mod, towers, e, vecs, (n + 1, d)),
                history_outputs(towers_mod, slots, arrays[e].history, stores, (n + 1, d)),
            ],
            dim=1,
        )
        inputs[e] = EntityInputs(offsets, values, torch.from_numpy(arrays[e].dense), out)
    return inputs


def model_layout(
    sparse: list[str],
    dense: list[str],
    slot_owner: list[str],
    arrays: dict[str, EntityArrays],
    feature_table: list[int],
    biased: bool,
) -> dict[str, list[int]]:
    """`ScoringModel`'s layout: where each trainer-order input sits in the per-entity
    arrays. `slot_owner` [T + H]: the entity of each tower, then of each history slot."""
    ku = len(arrays["user"].sparse_names)
    source = [
        arrays["user"].sparse_names.index(f)
        if owner_of(f, "") == "user"
        else ku + arrays["item"].sparse_names.index(f)
        for f in sparse
    ]
    dense_cat = arrays["user"].dense_names + arrays["item"].dense_names
    # the model concatenates each entity's tower_out columns (towers, then slots), users first
    tower_cat = [s for e in ("user", "item") for s, x in enumerate(slot_owner) if x == e]
    n_vec = 1 + len(sparse) + len(slot_owner)
    rows, cols = torch.triu_indices(n_vec, n_vec, offset=1)
    return {
        "feature_table": feature_table,
        "feature_source": source,
        "dense_index": [dense_cat.index(x) for x in dense],
        "towers": [tower_cat.index(s) for s in range(len(slot_owner))],
        "pairs": (rows * n_vec + cols).tolist(),
        "biased_mf": [int(biased)],
    }


def build_scoring_model(
    tcfg: TrainConfig, meta: FeaturesMeta, features: Path, tensors: dict[str, torch.Tensor]
) -> tuple[ScoringModel, dict[str, EntityArrays], dict[str, Any]]:
    """The scoring model of a run, its per-entity arrays and the recipe for the manifest.

    The interaction's vectors are, as the trainer's: dense output, the F sparse
    features, the T towers, then the H history-content slots, each slot a column of its
    bag owner's `tower_out` (after the owner's towers)."""
    sparse, dense, towers = model_features(tcfg, meta)
    slots = history_slots(tcfg, meta, towers)
    bags = [b for b, _ in slots]
    arrays = entity_arrays(features, meta, sparse, dense, tcfg.id_dropout > 0, bags)
    tables, feature_table, table_names = build_tables(tcfg, meta, sparse, tensors)
    towers_mod = Towers(*tower_layers(tensors))
    inputs = entity_inputs(features, meta, towers, slots, arrays, towers_mod, tables[0].embedding_dim)
    biased = tcfg.variant == "biased_mf"
    slot_owner = [x for x, _ in towers] + [owner_of(b, "") for b in bags]
    layout = model_layout(sparse, dense, slot_owner, arrays, feature_table, biased)
    mlps: dict[str, nn.Module] = {
        "dense_arch": nn.Identity() if biased else mlp_from(tensors, "dense_arch.model.", True),
        "over_arch": nn.Identity() if biased else mlp_from(tensors, "over_arch.model.", False),
        "projection": towers_mod,
    }
    model = ScoringModel(inputs["user"], inputs["item"], tables, layout, mlps)
    if biased:
        model.global_bias.data.copy_(tensors["global_bias"])
    model.eval()
    recipe = {
        "sparse": [
            {"name": f, "owner": owner_of(f, ""), "table": table_names[t]}
            for f, t in zip(sparse, feature_table)
        ],
        "dense": [{"name": x, "owner": owner_of(x, "")} for x in dense],
        # towers, then the history-content slots: the owner's bag, mean member vector
        # through the tower of `projected_by` (`project` with that tower's index)
        "towers": [{"entity": e, "column": c} for e, c in towers]
        + [
            {"entity": owner_of(b, ""), "column": b, "projected_by": towers[src][1]}
            for b, src in slots
        ],
        "cold_rows": tcfg.id_dropout > 0,
        "unknown_row": "row n of each kind: OOV attributes, the cold row, zero dense and vectors, empty bags",
    }
    return model, arrays, recipe


def train_pairs(features: Path) -> pa.Table:
    """Distinct (user row, item row) of the training rows, sorted (the `seen` filter)."""
    from serve.recipe import _batches

    codes = []
    n_items = int(read_features_meta(features)["n_items"])
    for b in _batches(features / "examples" / "train", ["user_id", "item_id"]):
        u = b.column(0).to_numpy(zero_copy_only=False).astype(np.int64)
        i = b.column(1).to_numpy(zero_copy_only=False).astype(np.int64)
        codes.append(np.unique(u * n_items + i))
    c = np.unique(np.concatenate(codes)) if codes else np.zeros(0, np.int64)
    return pa.table({"user_row": c // n_items, "item_row": c % n_items})


def item_titles(meta: FeaturesMeta, items: pa.Table) -> pa.Table:
    """The id map with a `title` column when the raw items table (source `raw`) has one."""
    raw = Path(str(meta.get("config", {}).get("raw_dir", ""))) / "items.parquet"
    if not raw.is_file() or "title" not in pq.read_schema(raw).names:
        return items
    t = pq.read_table(raw, columns=["item", "title"])
    titles = dict(
        zip(t.column("item").cast(pa.string()).to_pylist(), t.column("title").to_pylist())
    )
    return items.append_column(
        "title", pa.array([titles.get(i) for i in items.column("item").to_pylist()], pa.string())
    )


def _vectors(x: torch.Tensor) -> pa.FixedSizeListArray:
    flat = np.ascontiguousarray(x.detach().numpy().astype(np.float32)).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat), int(x.shape[1]))


def embedding_tables(
    model: ScoringModel, recipe: dict[str, Any], maps: dict[str, pa.Table]
) -> dict[str, pa.Table]:
    """Per kind: source id, row, the id-table row (`id_embedding`) and each tower's output."""
    out = {}
    names = [s["name"] for s in recipe["sparse"]]
    for e, inputs in (("user", model.users), ("item", model.items)):
        t = maps[e].select([e, "row"])
        n = t.num_rows
        if f"{e}_id" in names:
            table = model.tables[model.feature_table[names.index(f"{e}_id")]]
            assert isinstance(table, nn.EmbeddingBag)
            t = t.append_column("id_embedding", _vectors(table.weight[:n]))
        cols = [x["column"] for x in recipe["towers"] if x["entity"] == e]
        for k, col in enumerate(cols):
            t = t.append_column(f"{col}_tower", _vectors(inputs.tower_out[:n, k]))
        out[e] = t
    return out


def check_trained_on(root: Path, meta: FeaturesMeta, report: TrainReport) -> None:
    """Refuse a train/ made from other features (or similarity tables) than this run's.

    The report's recorded input fingerprints are compared, not a recomputed train
    fingerprint: that one also hashes the trainer's sources, which may change after a run.
    """
    inputs = report.get("inputs")
    where = root / "train" / "report.json"
    if not isinstance(inputs, dict):
        raise DataError(
            f"{where}: records no input fingerprints (a trainer older than `inputs`); retrain"
        )
    sim = root / "similarity" / "_meta.json"
    have = {
        "features": meta.get("fingerprint"),
        "similarity": read_similarity_meta(sim.parent).get("fingerprint") if sim.is_file() else None,
    }
    for stage, fp in have.items():
        if inputs.get(stage) is not None and inputs.get(stage) != fp:
            raise DataError(
                f"{where}: trained on other {stage} tables than {root / stage} "
                "(fingerprint mismatch); retrain before exporting"
            )


def run(cfg: ServeConfig) -> ExportManifest:
    """Write (or reuse) `run_dir/export/`; returns its manifest."""
    root = Path(cfg.run_dir)
    features = root / "features"
    meta = read_features_meta(features)
    report, tcfg, ckpt = read_run(root)
    check_trained_on(root, meta, report)
    fp = sha256_json({"train": report["fingerprint"], "export_version": EXPORT_VERSION})
    out = root / "export"
    if existing_output(out, fp, cfg.overwrite):
        print(f"export: reusing {out} (same run)", flush=True)
        manifest = read_export_manifest(out)
    else:
        manifest = write_export(out, fp, features, meta, report, tcfg, ckpt)
    if cfg.redis_url:
        from similarity.redis_embeddings import export_embeddings

        done = export_embeddings(cfg.redis_url, cfg.redis_prefix, out / "embeddings", fp)
        print(
            f"export: embeddings in redis under {cfg.redis_prefix}:emb, version {done['version']} ({done['status']})"
        )
    return manifest


def write_export(
    out: Path,
    fp: str,
    features: Path,
    meta: FeaturesMeta,
    report: TrainReport,
    tcfg: TrainConfig,
    ckpt: Path,
) -> ExportManifest:
    """Build the package of `ckpt` into `out` (atomically); returns the manifest."""
    model, arrays, recipe = build_scoring_model(tcfg, meta, features, read_checkpoint(ckpt))
    maps = {"user": id_map(features, "user"), "item": item_titles(meta, id_map(features, "item"))}
    for e, m in maps.items():
        if m.num_rows != entity_count(meta, e) or not np.array_equal(
            m.column("row").to_numpy(), np.arange(m.num_rows)
        ):
            raise DataError(
                f"{features / 'entities' / (e + 's.parquet')}: rows are not 0..n_{e}s-1"
            )
    manifest: ExportManifest = {
        "schema_version": SCHEMA_VERSION,
        "fingerprint": fp,
        "export_version": EXPORT_VERSION,
        "train_fingerprint": report["fingerprint"],
        "features_fingerprint": meta.get("fingerprint"),
        "checkpoint": ckpt.name,
        "format": "torchscript",
        "needs_torchrec": False,
        "score": "sigmoid(model(user_rows, item_rows))",
        "n_users": int(meta["n_users"]),
        "n_items": int(meta["n_items"]),
        "split": meta.get("split"),
        "recipe": recipe,
        "metrics": {"val": report.get("val"), "test": report.get("test")},
        "train_config": report.get("config"),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "numpy": np.__version__, "pyarrow": pa.__version__},
    }  # fmt: skip
    with atomic_dir(out) as tmp:
        with warnings.catch_warnings():  # TorchScript's notes on its own type system
            warnings.simplefilter("ignore", UserWarning)
            torch.jit.script(model).save(str(tmp / "model.pt"))
        for e, m in maps.items():
            pq.write_table(m, tmp / f"{e}s.parquet")
        pq.write_table(train_pairs(features), tmp / "seen.parquet")
        (tmp / "embeddings").mkdir()
        for e, t in embedding_tables(model, recipe, maps).items():
            pq.write_table(t, tmp / "embeddings" / f"{e}s.parquet")
        write_json_atomic(tmp / "_meta.json", manifest)
    print(
        f"export: wrote {out} (checkpoint {ckpt.name}, {meta['n_users']} users, {meta['n_items']} items)",
        flush=True,
    )
    return manifest


@record
def main(argv: list[str] | None = None, prog: str = "dlrrec export") -> int:
    return run_job(prog, __doc__ or "", ServeConfig, "serve", run, argv)


if __name__ == "__main__":
    sys.exit(main())
