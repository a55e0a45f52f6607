"""Train the DLRREC model: `dlrrec train --config configs/movielens-100k.yaml`.

Under torchrun/TorchX with N ranks:
    torchx run -s local_cwd launch/components.py:train -j 1x2 -- --config configs/movielens-100k.yaml

Setup order (dlrm_main / golden_training): process group -> EBC on meta ->
fused sparse optimizer -> planner -> DistributedModelParallel -> CombinedOptimizer
with dense Adam -> TrainPipelineSparseDist. Then an explicit loop: step, log every
N, evaluate on val every epoch (and every `val_every_steps`: each validation is a
selection candidate), checkpoint (every `checkpoint_every_steps`, at each epoch end and
at each new best), early-stop on val AUC; finally reload the best checkpoint and score
test at the val-chosen threshold. An unfinished `train/` of the same fingerprint is
resumed from its newest checkpoint (see trainer/checkpoint.py for why that is exact).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.distributed.elastic.multiprocessing.errors import record
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from torchrec.distributed.types import ShardingPlan
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.optim import optimizers as fbgemm_optim
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec.optim.rowwise_adagrad import RowWiseAdagrad
from tqdm import tqdm

from dlrrec.artifacts import fingerprinted_config, reusable_record, sha256_json, write_json_atomic
from dlrrec.code_version import code_version
from dlrrec.config import ConfigError, DataError, to_dict
from dlrrec.entry import run_job
from dlrrec.process_group import rank0_print
from trainer.checkpoint import (
    checkpoint_dir,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    read_trainer_state,
    save_checkpoint,
    step_seed,
)
from trainer.cold_start import ColdIds, build_cold_ids
from trainer.config import TrainConfig, parse_selection_metric
from trainer.data import (
    Batch,
    TrainingData,
    entity_store,
    epoch_steps,
    lane_layout,
    read_training_data,
    train_batches,
    with_history_content,
)
from trainer.distributed import DistEnv, all_reduce_mean, gather_rows, init_distributed, shutdown
from trainer.evaluation import EvalSpec, evaluate
from trainer.layout import model_sparse, table_groups
from trainer.loss import InfoNCEOptions
from trainer.model import (
    DLRREC,
    ArchSizes,
    BiasedMF,
    ContrastiveTerm,
    DLRRECTrain,
    LossWeights,
    ProjectionArch,
)
from trainer.plots import write_plots
from trainer.pretrain import pretrain_towers_autoencoder
from trainer.table_init import init_embedding_tables
from trainer.vector_store import feature_key

# torchrec's placeholders for fbgemm's fused optimizers: unlike torch.optim's classes they
# accept fbgemm-only arguments (`weight_decay_mode`), which torchrec hands to the kernels
SPARSE_OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": fbgemm_optim.Adam,
    "adagrad": fbgemm_optim.Adagrad,
    "rowwise_adagrad": RowWiseAdagrad,
    "sgd": fbgemm_optim.SGD,
}


def resolve_sparse_optimizer(name: str, device: torch.device) -> str:
    """`auto` -> rowwise_adagrad on every device (what `sparse_lr` is tuned for; fbgemm has
    it on CPU and CUDA). adam exists only in fbgemm's CUDA kernels."""
    if name == "auto":
        return "rowwise_adagrad"
    if name == "adam" and device.type != "cuda":
        raise ConfigError(
            "train.sparse_optimizer: adam is fused only in fbgemm's CUDA kernels; "
            "on CPU use rowwise_adagrad, adagrad or sgd (or auto)"
        )
    return name


def sparse_optimizer_kwargs(name: str, device: torch.device, *, lr: float, weight_decay: float) -> dict[str, Any]:
    """The fused optimizer's arguments, as fbgemm's kernels take them.

    Weight decay exists in two CUDA kernels: row-wise Adagrad adds it to the gradient
    (L2, `weight_decay_mode` 1) and Adam always decouples it (AdamW). fbgemm's CPU
    kernels ignore it (tests/trainer/test_devices.py shows it) and exact Adagrad and
    SGD have no weight-decay term, so asking for it there is refused, not ignored.

    Raises:
        ConfigError: `weight_decay > 0` on CPU, or with adagrad or sgd.
    """
    kwargs: dict[str, Any] = {"lr": lr}
    if name == "adam":
        kwargs["eps"] = 1e-8
    if weight_decay <= 0:
        return kwargs
    if device.type != "cuda" or name not in ("rowwise_adagrad", "adam"):
        where = "CPU kernels ignore it" if device.type != "cuda" else f"fused {name} has none"
        raise ConfigError(
            f"train.sparse_weight_decay: fbgemm's {where}; use emb_l2, or on CUDA "
            "sparse_optimizer=rowwise_adagrad (L2) or adam (decoupled)"
        )
    kwargs["weight_decay"] = weight_decay
    if name == "rowwise_adagrad":
        from fbgemm_gpu.split_table_batched_embeddings_ops_training import WeightDecayMode

        kwargs["weight_decay_mode"] = WeightDecayMode.L2
    return kwargs


def read_variant_data(cfg: TrainConfig) -> TrainingData:
    """The training data the configured variant uses (no content, pairs or side features it ignores)."""
    data = read_training_data(
        cfg.run_dir, cfg.modalities if cfg.uses_content else [], cfg.uses_contrastive
    )
    spec = data.features_meta["sparse_features"]
    data = replace(data, sparse_names=model_sparse(spec, data.sparse_names, cfg.history_tables))
    if cfg.history_content and cfg.uses_content:
        data = with_history_content(data, cfg.history_content)
    if cfg.variant == "biased_mf":
        missing = [n for n in ("user_id", "item_id") if n not in data.sparse_names]
        if missing:
            raise DataError(
                f"{cfg.run_dir}/features/_meta.json: variant biased_mf needs sparse feature {missing[0]!r}"
            )
        data = replace(data, sparse_names=["user_id", "item_id"], dense_names=[])
    return data


def build_tables(
    data: TrainingData, dim: int, cold: ColdIds | None = None, history_tables: str = "own"
) -> list[EmbeddingBagConfig]:
    """One table per sparse feature; with cold-start ids, the id tables get one extra row.

    History bags (features whose `_meta.json` entry names the id feature they index,
    `ids_of`) get tables of their own, or with `history_tables: shared` are pooled from
    that id feature's table.  A table with a multi-valued feature mean-pools (the same
    as sum for its single-valued ones).
    """
    meta = data.features_meta["sparse_features"]
    extra = cold.cold_id if cold is not None else {}
    by_table = table_groups(meta, data.sparse_names, history_tables)
    return [
        EmbeddingBagConfig(
            name=f"t_{table}",
            embedding_dim=dim,
            num_embeddings=max(int(meta[table]["vocab_size"]), 1) + (1 if table in extra else 0),
            feature_names=names,
            pooling=(
                PoolingType.MEAN
                if any(meta[n].get("multi_valued") for n in names)
                else PoolingType.SUM
            ),
        )
        for table, names in by_table.items()
    ]


def plan_summary(plan: ShardingPlan) -> dict[str, dict[str, Any]]:
    """{table: {sharding_type, compute_kernel, ranks}} for report.json."""
    out: dict[str, dict[str, Any]] = {}
    for module_plan in plan.plan.values():
        for table, ps in module_plan.items():  # type: ignore[attr-defined]
            out[table] = {
                "sharding_type": ps.sharding_type,
                "compute_kernel": ps.compute_kernel,
                "ranks": sorted(set(ps.ranks or [])),
            }
    return out


def split_counts(data: TrainingData, run_dir: str) -> tuple[dict[str, int], dict[str, int]]:
    """Rows (from the Parquet footers) and positives (from `_meta.json`) of each split.

    Raises:
        DataError: `_meta.json` has no positive counts (features built before them).
    """
    rows = {s: p.n for s, p in data.parts.items()}
    positives = data.features_meta.get("positives")
    if not isinstance(positives, dict) or set(positives) < set(rows):
        raise DataError(f"{Path(run_dir) / 'features' / '_meta.json'}: no 'positives' per split; rebuild the features")
    return rows, {s: int(positives[s]) for s in rows}


def build_loss_weights(cfg: TrainConfig, data: TrainingData, *, pos_weight: float) -> LossWeights:
    """The BCE's positive weight, the embedding L2 and the rating head (its weight, and
    the mean and std of the training rows' ratings).

    Raises:
        DataError: `rating_weight > 0` but the examples have no `rating` column.
    """
    weights = LossWeights(pos_weight=pos_weight, emb_l2=cfg.emb_l2)
    if cfg.rating_weight <= 0:
        return weights
    stats = data.features_meta.get("train_rating")
    if "rating" not in data.parts["train"].columns or stats is None:
        raise DataError(
            f"{Path(cfg.run_dir) / 'features' / 'examples' / 'train'}: no 'rating' column "
            "(train.rating_weight > 0 needs features built after it was added)"
        )
    std = float(stats["std"])
    return replace(
        weights, rating_weight=float(cfg.rating_weight), rating_mean=float(stats["mean"]),
        rating_std=std if std > 0 else 1.0,
    )  # fmt: skip


def build_arch_sizes(cfg: TrainConfig) -> ArchSizes:
    return ArchSizes(
        dense_arch=tuple(cfg.dense_arch),
        over_arch=tuple(cfg.over_arch),
        tower_hidden=cfg.tower_hidden,
        tower_dim=cfg.tower_dim,
        dropout=cfg.dropout,
    )


def build_contrastive_terms(
    cfg: TrainConfig, data: TrainingData
) -> tuple[ContrastiveTerm | None, ContrastiveTerm | None]:
    """The (item-item, user-user) InfoNCE terms the variant trains; None = off (no
    contrastive loss, a zero weight, or no tower of that entity).

    With extra negatives, each term's uniform probability is 1 / its catalogue size.
    """
    terms: list[ContrastiveTerm | None] = []
    kinds = (("item", data.item_neighbors, cfg.w_item_item), ("user", data.user_neighbors, cfg.w_user_user))
    for entity, nbs, weight in kinds:
        tower = next((t for t, (e, _) in enumerate(data.towers) if e == entity), -1)
        if not cfg.uses_contrastive or weight <= 0 or tower < 0:
            terms.append(None)
            continue
        uniform = 0.0
        if cfg.extra_negatives and nbs is not None:
            size = data.sampler_tables(entity, cfg.positive_sampling == "top1")[1].size
            uniform = 1.0 / size if size else 0.0
        col = data.towers[tower][1]
        options = InfoNCEOptions(
            tau=cfg.tau, log_q=cfg.logq_correction, uniform_p=uniform, chunk_size=cfg.infonce_chunk_size
        )
        # user-user anchors are the users' full train profiles (the entity table), as positives are
        anchor = feature_key(col, "row") if entity == "user" else ""
        terms.append(ContrastiveTerm(tower, col, anchor, options, weight=weight))
    return terms[0], terms[1]


def build_train_model(
    cfg: TrainConfig, data: TrainingData, tables: list[EmbeddingBagConfig], *, pos_weight: float
) -> DLRRECTrain:
    """The variant's model and loss on the `meta` device (tables are materialised by sharding)."""
    ebc = EmbeddingBagCollection(tables=tables, device=torch.device("meta"))
    model: DLRREC | BiasedMF = (
        BiasedMF(ebc) if cfg.variant == "biased_mf"
        else DLRREC(ebc, len(data.dense_names), len(data.towers), data.content_dim, build_arch_sizes(cfg),
                    tuple(t for _, t in data.history_slots))
    )  # fmt: skip
    if cfg.projection == "two_step" and isinstance(model, DLRREC) and data.towers:
        pretrain_projection(model.projection_arch, data, Path(cfg.run_dir), cfg.pretrain_epochs, cfg.seed)
    weights = build_loss_weights(cfg, data, pos_weight=pos_weight)
    return DLRRECTrain(model, weights, build_contrastive_terms(cfg, data), data.tower_spec())


def pretrain_projection(towers: ProjectionArch, data: TrainingData, run_dir: Path, epochs: int, seed: int) -> None:
    """V0 (`projection: two_step`): the towers fitted as autoencoders on the entity
    vectors, then frozen. Every rank fits the same towers on all entity vectors."""
    vectors = []
    for entity, col in data.towers:
        entities = entity_store(run_dir / "features", data.features_meta, entity, col)
        x = entities.read(np.arange(entities.n)).astype(np.float32)
        vectors.append(x[np.abs(x).sum(1) > 0])  # entities with no content are not data
    pretrain_towers_autoencoder(towers, vectors, epochs, 1e-3, seed)


def plan_sharding(train_model: DLRRECTrain, tables: list[EmbeddingBagConfig], env: DistEnv) -> ShardingPlan:
    """The planner's sharding of the id tables (collective)."""
    # Shard, don't replicate: the point of the sparse arch is tables too big for one
    # host, so data_parallel is excluded even for the small MovieLens tables.
    constraints = {t.name: ParameterConstraints(sharding_types=["table_wise", "row_wise"]) for t in tables}
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", env.world_size))
    planner = EmbeddingShardingPlanner(
        topology=planner_topology(env.world_size, env.device, local_ranks), constraints=constraints
    )
    pg = torch.distributed.GroupMember.WORLD
    assert pg is not None
    return planner.collective_plan(train_model, None, pg)


def build_model(
    cfg: TrainConfig,
    data: TrainingData,
    env: DistEnv,
    pos_weight: float,
    sparse_opt: str,
    cold: ColdIds | None = None,
) -> tuple[DistributedModelParallel, CombinedOptimizer, ShardingPlan]:
    """The sharded model (the torchrec setup order: EBC on meta, fused sparse optimizer,
    planner, DistributedModelParallel) and the combined optimizer with dense Adam."""
    torch.manual_seed(cfg.seed)
    tables = build_tables(data, cfg.embedding_dim, cold, cfg.history_tables)
    train_model = build_train_model(cfg, data, tables, pos_weight=pos_weight)
    opt_kwargs = sparse_optimizer_kwargs(sparse_opt, env.device, lr=cfg.sparse_lr, weight_decay=cfg.sparse_weight_decay)
    apply_optimizer_in_backward(
        SPARSE_OPTIMIZERS[sparse_opt], train_model.model.sparse_arch.parameters(), opt_kwargs
    )
    plan = plan_sharding(train_model, tables, env)
    dmp = DistributedModelParallel(module=train_model, device=env.device, plan=plan)
    init_embedding_tables(dmp, tables, cfg.seed)  # the same initial tables for any rank count
    # frozen (V0 two_step) towers are left out of the dense optimizer
    trainable = {k: v for k, v in in_backward_optimizer_filter(dmp.named_parameters()) if v.requires_grad}
    dense = KeyedOptimizerWrapper(
        trainable, lambda params: torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    )
    return dmp, CombinedOptimizer([dmp.fused_optimizer, dense]), plan


def planner_topology(world_size: int, device: torch.device, local_world_size: int) -> Topology:
    """The planner's hardware, measured rather than torchrec's constants: on CUDA each
    rank's GPU memory (hbm_cap); on every device each rank's share of the host memory
    (ddr_cap); and the ranks per node (one GPU each on CUDA), which decides which
    collectives stay inside a node."""
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    hbm = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None
    return Topology(
        world_size=world_size,
        compute_device=device.type,
        hbm_cap=hbm,
        ddr_cap=host // max(local_world_size, 1),
        local_world_size=local_world_size,
    )


@dataclass(frozen=True)
class LearningRates:
    """The dense (Adam) and sparse (fused) learning rates of epoch 0 and their per-epoch decay."""

    dense: float
    sparse: float
    decay: float


def build_learning_rates(cfg: TrainConfig) -> LearningRates:
    return LearningRates(dense=cfg.lr, sparse=cfg.sparse_lr, decay=cfg.lr_decay)


def set_epoch_lr(
    optimizer: CombinedOptimizer, dmp: DistributedModelParallel, rates: LearningRates, epoch: int
) -> None:
    """Both optimizers' learning rates for `epoch`: (sparse_)lr * lr_decay**epoch, a
    function of the epoch alone, so a resumed run trains at the same rates (and the
    checkpoint format does not change)."""
    scale = rates.decay**epoch
    fused = {id(g) for g in dmp.fused_optimizer.param_groups}
    for group in optimizer.param_groups:
        group["lr"] = (rates.sparse if id(group) in fused else rates.dense) * scale  # type: ignore[index]


def current_lrs(optimizer: CombinedOptimizer, dmp: DistributedModelParallel) -> dict[str, float]:
    """{dense, sparse}: the learning rates the optimizers step with now."""
    fused = {id(g) for g in dmp.fused_optimizer.param_groups}
    out: dict[str, float] = {}
    for group in optimizer.param_groups:
        out.setdefault("sparse" if id(group) in fused else "dense", float(group["lr"]))
    return out


def require_tensorboard() -> None:
    """Fail every rank up front, with the fix, when TensorBoard logging cannot work."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as e:
        raise ConfigError(
            f"train.tensorboard: cannot import TensorBoard ({e}); install the pinned "
            "`tensorboard` from requirements.txt or pass tensorboard=false"
        ) from e


class Rank0:
    """Side effects on rank 0 only: stdout, the files under `train/`, TensorBoard and the bar.

    TensorBoard events go to `train/tensorboard/`; a resumed run purges the events
    after its checkpoint's step, which it logs again.
    """

    def __init__(self, env: DistEnv, out: Path, tensorboard: bool = False, progress_bar: bool = False) -> None:
        self.env = env
        self.out = out
        self.tb: Any = None
        self.tensorboard = tensorboard and env.is_main
        # a bar in a log file is noise: only on a terminal
        self.progress_bar = progress_bar and env.is_main and sys.stderr.isatty()

    def open_tensorboard(self, resumed_step: int | None) -> None:
        if self.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = None if resumed_step is None else resumed_step + 1
            self.tb = SummaryWriter(str(self.out / "tensorboard"), purge_step=purge)

    def scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        if self.tb is not None:
            for name, value in values.items():
                self.tb.add_scalar(f"{prefix}/{name}", value, step)
            self.tb.flush()

    def bar(self, total: int, initial: int, desc: str) -> tqdm:
        return tqdm(total=total, initial=initial, desc=desc, disable=not self.progress_bar, dynamic_ncols=True)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None

    def print(self, *args: Any) -> None:
        rank0_print(*args)

    def metrics(self, record_: dict[str, Any]) -> None:
        if self.env.is_main:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record_, sort_keys=True) + "\n")


def fingerprint(cfg: TrainConfig, data: TrainingData, trained_on: dict[str, str]) -> str:
    """Hash of what the model and report depend on: the config, the inputs, and
    `trained_on` = {device type, resolved sparse optimizer} (`auto` and fbgemm's
    kernels differ by device, so a CUDA run never reuses a CPU run's outputs)."""
    return sha256_json(
        {
            "config": fingerprinted_config(cfg, "train"),
            "features": data.features_meta.get("fingerprint"),
            "similarity": data.similarity_meta.get("fingerprint") if data.similarity_meta else None,
            **trained_on,
            "code": code_version("train"),  # the trainer's sources (dlrrec/code_version.py)
        }
    )


@dataclass
class Progress:
    """The loop's non-tensor state, saved as `trainer_state.json` with every checkpoint.

    `epoch` is the epoch in progress, or the last finished one when `epoch_done`;
    `epoch_step` counts its steps done, `step` all steps done. `epoch_sums` holds each
    rank's partial-epoch loss sums (loss, rec, item_item, user_user), one row per rank,
    so a resumed epoch reports the same mean loss; `epoch_seconds` is its time so far.
    """

    epoch: int = 0
    epoch_step: int = 0
    epoch_done: bool = False
    step: int = 0
    best_metric: float | None = None
    best_epoch: int = -1
    best_step: int = -1
    best_checkpoint: str | None = None  # folder name under train/checkpoints/
    best_losses: dict[str, float] | None = None
    bad_epochs: int = 0
    epoch_improved: bool = False  # a `val_every_steps` validation of this epoch set the best
    epoch_sums: list[list[float]] = field(default_factory=list)
    epoch_seconds: float = 0.0
    train_seconds: float = 0.0
    train_examples: int = 0
    val_auc: float | None = None
    table_forwards: int = 0  # forwards through the fused tables: fbgemm's optimizer step
    resumed_from: list[int] = field(default_factory=list)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Progress:
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in state.items() if k in names})


LOSS_NAMES = ("loss", "rec", "item_item", "user_user")
Roc = tuple[np.ndarray, np.ndarray, float]  # test's ROC curve (FPR, TPR) and AUC


def segment(batches: Iterator[Any], done: int, val_every_steps: int) -> Iterator[Any]:
    """An epoch's batches up to its next `val_every_steps` validation (all when 0).

    `done` is the epoch's steps done. The pipeline runs dry at the end of each segment,
    so no input all-to-all of a prefetched batch is in flight while validation runs its
    own collectives on the same process group.
    """
    if not val_every_steps:
        return batches
    return itertools.islice(batches, val_every_steps - done % val_every_steps)


def should_stop_early(prog: Progress, schedule: Schedule) -> bool:
    return prog.epoch + 1 >= schedule.min_epochs and prog.bad_epochs >= schedule.patience


def find_resume_point(out: Path, fp: str, trained_on: dict[str, str], fresh: bool) -> Path | None:
    """The checkpoint to resume from, None to start afresh (always when `fresh`: overwrite,
    or resume off); refuses another run's checkpoints, and names the device or sparse
    optimizer when that is what differs."""
    if fresh:
        return None
    latest = latest_checkpoint(out / "checkpoints")
    if latest is None:
        return None
    fix = "pass overwrite=true to replace it, resume=false to start over, or choose another run_dir"
    try:
        state = read_trainer_state(latest)
    except ValueError as e:  # an older trainer's checkpoint (no optimizer state) or a corrupt file
        raise ConfigError(f"{latest}: cannot resume ({e}); {fix}") from e
    saved = {k: state.get(k) for k in trained_on}
    if state.get("fingerprint") != fp and None not in saved.values() and saved != trained_on:
        raise ConfigError(
            f"{latest}: trained with device={saved['device']} sparse_optimizer={saved['sparse_optimizer']}, "
            f"this run has device={trained_on['device']} sparse_optimizer={trained_on['sparse_optimizer']}, "
            f"and fused optimizer state does not carry over; {fix}"
        )
    if state.get("fingerprint") != fp:
        raise ConfigError(f"{latest}: an unfinished run of a different config, input or code version; {fix}")
    return latest


def rank_rows(sums: np.ndarray) -> list[list[float]]:
    """Collective: every rank's `sums` [4], as rows in rank order."""
    rank = torch.distributed.get_rank()
    _, values = gather_rows(np.arange(sums.size) + rank * sums.size, sums)
    return values.reshape(-1, sums.size).tolist()


def my_row(rows: list[list[float]], rank: int, world_size: int) -> np.ndarray:
    """This rank's partial-epoch sums; after a resize, the mean over the saved ranks."""
    if not rows:
        return np.zeros(4)
    return np.array(rows[rank]) if len(rows) == world_size else np.mean(rows, axis=0)


def truncate_metrics(path: Path, step: int) -> None:
    """Drop the metrics.jsonl records a resumed run will write again (those after `step`)."""
    if not path.is_file():
        return
    keep = [x for x in path.read_text().splitlines() if x.strip() and json.loads(x).get("step", 0) <= step]
    path.write_text("".join(x + "\n" for x in keep))


def quiet_known_warnings() -> None:
    """Silence third-party deprecation chatter that says nothing about this run.

    torchrec 1.8 warns on every run about ShardedTensor (DCP), `broadcast_buffers`,
    the planner's storage heuristics and fx tracing; none is actionable here and
    together they bury the training log. Real errors still raise.
    """
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*HeuristicalStorageReservation.*")
    for name in ("torchrec", "torch.fx._symbolic_trace", "torch.distributed.checkpoint"):
        logging.getLogger(name).setLevel(logging.ERROR)


@dataclass(frozen=True)
class Schedule:
    """When the loop logs, validates, checkpoints and stops (`build_schedule`).

    `steps_per_epoch` is whole global batches (capped by `max_steps_per_epoch`); the
    `stop_after_*` pauses and the periodic intervals are 0 when off.
    """

    epochs: int
    steps_per_epoch: int
    min_epochs: int
    patience: int
    log_every: int
    val_every_steps: int
    checkpoint_every_steps: int
    keep_checkpoints: int
    stop_after_epoch: int
    stop_after_step: int


@dataclass(frozen=True)
class Sampling:
    """How batches are drawn (`build_sampling`): the arguments of `train_batches` and `evaluate`."""

    batch_size: int
    data_lanes: int
    eval_batch_size: int
    seed: int
    top1: bool
    max_steps_per_epoch: int
    extra_negatives: int
    positive_sets: bool


@dataclass(frozen=True)
class Selection:
    """How val picks the reported checkpoint and its threshold (`build_selection`)."""

    metric: str  # auc | fpr_at_recall
    min_recall: float
    score_test: bool  # False: a sealed run, whose test rows are never scored


@dataclass
class Job:
    """What `setup` hands to `train`, `evaluate_best` and `cleanup`: one run's handles.

    `report` holds the report's fields known at setup; `evaluate_best` adds the results.
    """

    env: DistEnv
    data: TrainingData
    out: Path
    fingerprint: str
    trained_on: dict[str, str]
    schedule: Schedule
    sampling: Sampling
    selection: Selection
    rates: LearningRates
    r0: Rank0
    dmp: DistributedModelParallel
    optimizer: CombinedOptimizer
    pipeline: TrainPipelineSparseDist
    cold: ColdIds | None
    prog: Progress
    report: dict[str, Any]
    t_start: float = 0.0  # the run's start, set by `setup`

    @property
    def ckpt_root(self) -> Path:
        return self.out / "checkpoints"


def build_schedule(cfg: TrainConfig, n_train_rows: int) -> Schedule:
    return Schedule(
        epochs=cfg.epochs,
        steps_per_epoch=epoch_steps(n_train_rows, cfg.batch_size, cfg.max_steps_per_epoch),
        min_epochs=cfg.min_epochs,
        patience=cfg.patience,
        log_every=cfg.log_every,
        val_every_steps=cfg.val_every_steps,
        checkpoint_every_steps=cfg.checkpoint_every_steps,
        keep_checkpoints=cfg.keep_checkpoints,
        stop_after_epoch=cfg.stop_after_epoch,
        stop_after_step=cfg.stop_after_step,
    )


def build_sampling(cfg: TrainConfig) -> Sampling:
    return Sampling(
        batch_size=cfg.batch_size,
        data_lanes=cfg.data_lanes,
        eval_batch_size=cfg.eval_batch_size,
        seed=cfg.seed,
        top1=cfg.positive_sampling == "top1",
        max_steps_per_epoch=cfg.max_steps_per_epoch,
        extra_negatives=cfg.extra_negatives,
        positive_sets=cfg.mask_positive_set,
    )


def build_selection(cfg: TrainConfig) -> Selection:
    metric, min_recall = parse_selection_metric(cfg.selection_metric)
    return Selection(metric, min_recall, cfg.score_test)


def build_report_fields(
    cfg: TrainConfig, data: TrainingData, env: DistEnv, sparse_opt: str, sharding: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """The report's fields that are known before training (the config, the run, the inputs)."""
    meta = data.features_meta
    return {
        "dataset": meta.get("dataset", cfg.dataset),
        "split": meta.get("split"),
        "temporal_history": meta.get("temporal_history"),  # causal | frozen
        "seed": cfg.seed,
        "world_size": env.world_size,
        "device": str(env.device),
        "backend": env.backend,
        "selection_metric": f"val_{cfg.selection_metric}",
        "sharding_plan": sharding,
        "sparse_optimizer": sparse_opt,
        "variant": {
            "model": cfg.variant,
            "projection": cfg.projection if cfg.uses_content else None,
            "contrastive": cfg.uses_contrastive,
            "modalities": list(cfg.modalities) if cfg.uses_content else [],
        },
        "code_version": code_version("train"),
        # what `dlrrec export` checks the run's features/ and similarity/ against
        "inputs": {
            "features": meta.get("fingerprint"),
            "similarity": data.similarity_meta.get("fingerprint") if data.similarity_meta else None,
        },
        "config": to_dict(cfg),
    }


def finished_report(
    out: Path, fp: str, env: DistEnv, *, overwrite: bool, score_test: bool
) -> tuple[dict[str, Any] | None, bool]:
    """(the report to reuse, whether to score test of a finished sealed run).

    A finished run of this fingerprint is reused, unless it was sealed and test is now
    asked for ("unsealing": its best checkpoint scores test, nothing is trained).

    Raises:
        ConfigError: `out` holds another run and `overwrite` is off (`reusable_record`).
    """
    report_path = out / "report.json"
    old = None if overwrite else reusable_record(report_path, fp, overwrite=False)
    if old is None:
        return None, False
    if score_test and old.get("test") is None:
        return None, True
    if env.is_main:
        print(f"train: reusing {report_path} (same config and inputs)", flush=True)
    return (old if score_test else {**old, "test": None}), False


def prepare_run_dir(out: Path, env: DistEnv, config_yaml: str | None) -> None:
    """A fresh `out` holding only `config.yaml` when `config_yaml` is given (else a resumed
    run's `out` is kept). Collective: every rank waits for rank 0."""
    torch.distributed.barrier()
    if env.is_main and config_yaml is not None:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        (out / "config.yaml").write_text(config_yaml)
    torch.distributed.barrier()


def check_split_sizes(
    run_dir: str, n_rows: dict[str, int], n_positives: dict[str, int], sampling: Sampling, score_test: bool
) -> None:
    """Refuse splits whose AUC is undefined and a batch larger than the training rows.

    Raises:
        DataError: val (or test, when scored) lacks one of the classes.
        ConfigError: `batch_size` exceeds the training rows.
    """
    for name in ("val", "test") if score_test else ("val",):
        if not 0 < n_positives[name] < n_rows[name]:
            raise DataError(
                f"{Path(run_dir) / 'features'}: the {name} split has {n_rows[name]} rows "
                "and not both classes, so AUC is undefined; use more data or another split"
            )
    if epoch_steps(n_rows["train"], sampling.batch_size, sampling.max_steps_per_epoch) == 0:
        raise ConfigError(
            f"train.batch_size: {sampling.batch_size} is more than the {n_rows['train']} training rows "
            "(an epoch is whole global batches); lower it"
        )


def restore_progress(
    resume_from: Path | None, job: Job, unsealing: bool
) -> Progress:
    """The checkpoint's progress (a fresh one without), its model and optimizer loaded into `job`."""
    if resume_from is None:
        return Progress()
    prog = Progress.from_state(load_checkpoint(resume_from, job.dmp, job.optimizer))
    if unsealing:
        job.r0.print(f"train: scoring test with the best checkpoint of the sealed run in {job.out}")
        return prog
    prog.resumed_from.append(prog.step)
    if job.env.is_main:
        truncate_metrics(job.out / "metrics.jsonl", prog.step)
    job.r0.print(f"train: resuming from {resume_from} (epoch {prog.epoch}, step {prog.step})")
    return prog


def count_table_forwards(job: Job) -> None:
    """Keep fbgemm's Adam step in `job.prog.table_forwards` and hand it back on resume.

    fbgemm's Adam bias correction uses a step counter that every forward through the
    tables advances (validation's too) and no state dict holds: count the forwards
    here, checkpoint the count with the progress and restore it.
    """
    job.dmp.fused_optimizer.set_optimizer_step(job.prog.table_forwards)

    def count_forward(*_: Any) -> None:
        job.prog.table_forwards += 1

    job.dmp.register_forward_pre_hook(count_forward)


def setup(cfg: TrainConfig, env: DistEnv) -> Job | dict[str, Any]:
    """Everything the loop needs, or the report of a finished run of this fingerprint.

    Errors that need no training (bad flags, stale or foreign outputs) are raised before
    anything is written; the run dir is then made fresh or kept for a resume.
    """
    t_start = time.time()
    if cfg.tensorboard:
        require_tensorboard()  # before anything is written
    out = Path(cfg.run_dir) / "train"
    data = read_variant_data(cfg)
    sparse_opt = resolve_sparse_optimizer(cfg.sparse_optimizer, env.device)
    sparse_optimizer_kwargs(sparse_opt, env.device, lr=cfg.sparse_lr, weight_decay=cfg.sparse_weight_decay)  # refuse early
    trained_on = {"device": env.device.type, "sparse_optimizer": sparse_opt}
    fp = fingerprint(cfg, data, trained_on)
    old, unsealing = finished_report(out, fp, env, overwrite=cfg.overwrite, score_test=cfg.score_test)
    if old is not None:
        return old
    # every rank decides from the same files; a sealed run's last checkpoint is its end
    fresh = cfg.overwrite or not cfg.resume
    resume_from = latest_checkpoint(out / "checkpoints") if unsealing else find_resume_point(out, fp, trained_on, fresh)
    config_yaml = f"# fingerprint: {fp}\n" + yaml.safe_dump(to_dict(cfg), sort_keys=True)
    prepare_run_dir(out, env, config_yaml if resume_from is None else None)
    job = build_job(cfg, env, data, out, trained_on, fp)
    job.t_start = t_start
    job.prog = restore_progress(resume_from, job, unsealing)
    count_table_forwards(job)
    job.r0.open_tensorboard(job.prog.step if resume_from is not None else None)
    check_split_sizes(cfg.run_dir, *split_counts(data, cfg.run_dir), job.sampling, cfg.score_test)
    return job


def build_job(
    cfg: TrainConfig, env: DistEnv, data: TrainingData, out: Path, trained_on: dict[str, str], fp: str
) -> Job:
    """The sharded model, its optimizers and pipeline and the loop's settings, at step 0."""
    selection = build_selection(cfg)
    r0 = Rank0(env, out, cfg.tensorboard, cfg.progress_bar)
    n_rows, n_positives = split_counts(data, cfg.run_dir)
    n_pos = float(n_positives["train"])
    pos_weight = (n_rows["train"] - n_pos) / max(n_pos, 1.0) if cfg.class_weight == "balanced" else 1.0
    if cfg.batch_size % env.world_size:
        raise ConfigError(
            f"train.batch_size: {cfg.batch_size} is not divisible by world size {env.world_size}"
        )
    lane_layout(cfg.batch_size, env.world_size, cfg.data_lanes)
    train_ids = {"user_id": np.flatnonzero(data.train_rows["user"]), "item_id": np.flatnonzero(data.train_rows["item"])}
    cold = build_cold_ids(cfg.id_dropout, data.sparse_names, data.sparse_vocab, train_ids)
    sparse_opt = trained_on["sparse_optimizer"]
    dmp, optimizer, plan = build_model(cfg, data, env, pos_weight, sparse_opt, cold)
    sharding = plan_summary(plan)
    r0.print(f"train: world_size={env.world_size} device={env.device} sparse_optimizer={sparse_opt}")
    r0.print("train: sharding plan " + json.dumps({k: (v["sharding_type"], v["ranks"]) for k, v in sharding.items()}))
    return Job(
        env=env, data=data, out=out, fingerprint=fp, trained_on=trained_on,
        schedule=build_schedule(cfg, n_rows["train"]), sampling=build_sampling(cfg), selection=selection,
        rates=build_learning_rates(cfg), r0=r0, dmp=dmp, optimizer=optimizer,
        pipeline=TrainPipelineSparseDist(dmp, optimizer, env.device, execute_all_batches=True),
        cold=cold, prog=Progress(), report=build_report_fields(cfg, data, env, sparse_opt, sharding),
    )  # fmt: skip


def checkpoint(job: Job) -> Path:
    """Save the model, optimizers and progress at this step; prune all but the newest and the best."""
    prog = job.prog
    best = {job.ckpt_root / prog.best_checkpoint} if prog.best_checkpoint else set()
    state = {**asdict(prog), "fingerprint": job.fingerprint, **job.trained_on}
    path = save_checkpoint(job.ckpt_root, prog.step, job.dmp, job.optimizer, state, job.env.is_main)
    prune_checkpoints(job.ckpt_root, job.schedule.keep_checkpoints, best, job.env.is_main)
    return path


def validate(job: Job, epoch: int, losses: dict[str, float], dt: float | None) -> bool:
    """Score val, log it, and make this step the best one if it beats the best so far.

    `losses` are the epoch's mean training losses so far; `dt` is the epoch's seconds
    at an epoch end and None for a `val_every_steps` validation inside the epoch.
    Returns whether it improved.
    """
    prog, sel = job.prog, job.selection
    spec = EvalSpec("val", (0.5,), sel.min_recall, ks=())  # per-user metrics: the final report only
    summary = evaluate(job.dmp, job.data, spec, job.sampling.eval_batch_size, job.env, job.out, job.cold).summary
    val = summary.report(0.5)
    metric = summary.selection_value(sel.metric)  # larger is better
    improved = prog.best_metric is None or metric > prog.best_metric
    if sel.metric == "fpr_at_recall":
        val["fpr_at_recall"] = -metric
    log_validation(job, epoch, losses, val, dt, "  *" if improved else "")
    prog.val_auc = val["auc"]
    if improved:
        prog.best_metric, prog.best_epoch, prog.best_step = metric, epoch, prog.step
        prog.best_losses = losses
        prog.best_checkpoint = checkpoint_dir(job.ckpt_root, prog.step).name
        prog.epoch_improved = dt is None
    return improved


def log_validation(
    job: Job, epoch: int, losses: dict[str, float], val: dict[str, Any], dt: float | None, mark: str
) -> None:
    """A validation's metrics.jsonl record, TensorBoard scalars and printed line."""
    prog, r0 = job.prog, job.r0
    if dt is None:
        r0.metrics({"kind": "val", "epoch": epoch, "step": prog.step, "epoch_step": prog.epoch_step,
                    "train": losses, "val": val})  # fmt: skip
        r0.scalars("val_step", {k: float(v) for k, v in val.items() if k != "n"}, prog.step)
        r0.print(f"epoch {epoch:3d}  step {prog.epoch_step:5d}/{job.schedule.steps_per_epoch}  val auc {val['auc']:.4f} "
                 f"logloss {val['logloss']:.4f}" + mark)  # fmt: skip
        return
    examples_per_s = prog.epoch_step * job.sampling.batch_size / max(dt, 1e-9)
    r0.metrics({"kind": "epoch", "epoch": epoch, "step": prog.step, "train": losses, "val": val,
                "lr": current_lrs(job.optimizer, job.dmp), "seconds": dt, "examples_per_s": examples_per_s})  # fmt: skip
    r0.scalars("epoch", {**{f"train_{k}": v for k, v in losses.items()},
                         **{f"val_{k}": float(v) for k, v in val.items() if k != "n"},
                         "examples_per_s": examples_per_s}, epoch)  # fmt: skip
    r0.print(
        f"epoch {epoch:3d}  loss {losses['loss']:.4f} (rec {losses['rec']:.4f} ii {losses['item_item']:.4f} "
        f"uu {losses['user_user']:.4f})  val auc {val['auc']:.4f} logloss {val['logloss']:.4f}  {dt:.1f}s" + mark
    )


def epoch_batches(job: Job, epoch: int) -> Iterator[Batch]:
    """This rank's batches of `epoch` from the step the progress is at (cold-start ids applied)."""
    s, env, start = job.sampling, job.env, job.prog.epoch_step
    it = train_batches(
        job.data, s.batch_size, env.rank, env.world_size, epoch, s.seed, s.top1,
        s.max_steps_per_epoch, start, s.extra_negatives, s.positive_sets, s.data_lanes,
    )  # fmt: skip
    cold = job.cold
    if cold is None:
        return it
    return (
        cold.train_batch(b, s.seed, epoch, step, s.batch_size, env.rank, env.world_size)
        for step, b in enumerate(it, start=start)
    )


def train(job: Job) -> bool:
    """The epochs left to run, with validation, checkpoints and early stopping.

    Returns:
        Whether the run paused (`stop_after_*`) before its end; a rerun resumes it.
    """
    prog, s = job.prog, job.schedule
    start_epoch = prog.epoch + 1 if prog.epoch_done else prog.epoch
    if prog.epoch_done and should_stop_early(prog, s):
        start_epoch = s.epochs  # stopped early just before the interruption
    paused = False
    for epoch in range(start_epoch, s.epochs):
        sums, t0, paused = train_epoch(job, epoch)
        if paused or finish_epoch(job, epoch, sums, t0):
            break
        if s.stop_after_epoch == epoch + 1 or (s.stop_after_step and s.stop_after_step == prog.step):
            paused = epoch + 1 < s.epochs
            if paused:
                break
    if paused:
        job.r0.print(f"train: paused after step {prog.step} (epoch {prog.epoch}); rerun to resume")
    job.r0.close()
    return paused


def train_epoch(job: Job, epoch: int) -> tuple[np.ndarray, float, bool]:
    """The steps of `epoch` from where the progress is.

    Returns:
        This rank's loss sums [4], the epoch's start time (validation and checkpoint
        time excluded), and whether the run paused inside the epoch.
    """
    prog, env, n_steps = job.prog, job.env, job.schedule.steps_per_epoch
    if prog.epoch != epoch or prog.epoch_done:
        prog.epoch, prog.epoch_step, prog.epoch_done = epoch, 0, False
        prog.epoch_sums, prog.epoch_seconds = [], 0.0
    job.dmp.train()
    set_epoch_lr(job.optimizer, job.dmp, job.rates, epoch)
    it = epoch_batches(job, epoch)
    bar = job.r0.bar(n_steps, prog.epoch_step, f"epoch {epoch}")
    sums = my_row(prog.epoch_sums, env.rank, env.world_size)
    t0 = time.time() - prog.epoch_seconds
    paused = False
    seg, seg_start = segment(it, prog.epoch_step, job.schedule.val_every_steps), prog.epoch_step
    while True:
        # dropout masks are a function of the step, so a resumed run draws the same ones
        torch.manual_seed(step_seed(job.sampling.seed, epoch, prog.epoch_step, env.rank))
        try:
            loss, _, _, _, parts = job.pipeline.progress(seg)
        except StopIteration:
            if seg is it or prog.epoch_step >= n_steps or prog.epoch_step == seg_start:
                break
            seg, seg_start = segment(it, prog.epoch_step, job.schedule.val_every_steps), prog.epoch_step
            continue
        prog.step += 1
        prog.epoch_step += 1
        sums += np.array([float(loss), *parts.tolist()])
        bar.update(1)
        log_step(job, epoch, loss, parts, bar)
        if prog.epoch_step >= n_steps:
            continue  # the epoch-end validation and checkpoint follow
        t0, paused = after_step(job, epoch, sums, t0)
        if paused:
            break
    job.pipeline.detach()
    bar.close()
    return sums, t0, paused


def log_step(job: Job, epoch: int, loss: torch.Tensor, parts: torch.Tensor, bar: tqdm) -> None:
    """Every `log_every` steps: the step's losses to metrics.jsonl, TensorBoard and the bar."""
    step = job.prog.step
    if not job.schedule.log_every or step % job.schedule.log_every:
        return
    step_losses = {"loss": float(loss), "rec": float(parts[0]),
                   "item_item": float(parts[1]), "user_user": float(parts[2])}  # fmt: skip
    job.r0.metrics({"kind": "step", "epoch": epoch, "step": step, **step_losses})
    job.r0.scalars("step", step_losses, step)
    bar.set_postfix(loss=f"{float(loss):.4f}")


def after_step(job: Job, epoch: int, sums: np.ndarray, t0: float) -> tuple[float, bool]:
    """A step inside the epoch: validate every `val_every_steps`, checkpoint when it improved,
    periodically, or before a pause. Returns the shifted epoch start time and whether to pause."""
    prog, s = job.prog, job.schedule
    pause = s.stop_after_step == prog.step
    improved = False
    if s.val_every_steps and prog.epoch_step % s.val_every_steps == 0:
        t_val = time.time()
        job.pipeline.detach()  # the segment ran dry here; the next progress() re-attaches
        partial = all_reduce_mean((sums / prog.epoch_step).tolist())
        improved = validate(job, epoch, dict(zip(LOSS_NAMES, partial)), None)
        t0 += time.time() - t_val  # validation time is not training time
    periodic = s.checkpoint_every_steps and prog.step % s.checkpoint_every_steps == 0
    if pause or improved or periodic:
        t_save = time.time()
        prog.epoch_sums, prog.epoch_seconds = rank_rows(sums), t_save - t0
        checkpoint(job)
        t0 += time.time() - t_save  # checkpoint time is not training time
    return t0, pause


def finish_epoch(job: Job, epoch: int, sums: np.ndarray, t0: float) -> bool:
    """The epoch-end validation, patience count and checkpoint. Returns whether to stop early."""
    prog = job.prog
    dt = time.time() - t0
    prog.epoch_done = True
    prog.epoch_sums, prog.epoch_seconds = [], dt
    prog.train_seconds += dt
    prog.train_examples += prog.epoch_step * job.sampling.batch_size
    means = all_reduce_mean((sums / max(prog.epoch_step, 1)).tolist())
    improved = validate(job, epoch, dict(zip(LOSS_NAMES, means)), dt)
    if improved or prog.epoch_improved:
        prog.bad_epochs = 0
    else:
        prog.bad_epochs += 1
    prog.epoch_improved = False
    checkpoint(job)
    if should_stop_early(prog, job.schedule):
        job.r0.print(f"train: early stop after epoch {epoch} (best epoch {prog.best_epoch})")
        return True
    return False


def evaluate_best(job: Job) -> tuple[dict[str, Any], Roc | None]:
    """Reload the best checkpoint, pick the threshold on val (writing val's per-row
    probabilities) and score test once.

    Returns:
        The report and test's ROC curve and AUC (None when sealed).
    """
    prog, sel, data = job.prog, job.selection, job.data
    if prog.best_checkpoint is None:
        raise RuntimeError(f"{job.ckpt_root}: no epoch finished, so there is no model to report")
    best_path = job.ckpt_root / prog.best_checkpoint
    load_checkpoint(best_path, job.dmp, None)
    batch, env = job.sampling.eval_batch_size, job.env
    # the selected model's val rows, per row, for error analysis (slices, calibration) without test
    vspec = EvalSpec("val", (), sel.min_recall, predictions=job.out / "val_predictions.parquet")
    v = evaluate(job.dmp, data, vspec, batch, env, job.out, job.cold)
    if sel.metric == "fpr_at_recall":  # the operating point the selection asked for
        threshold = v.summary.fpr_at_recall()[1]
    else:
        threshold = v.summary.best_accuracy_threshold()
    val = {**v.summary.report(threshold), **v.ranking}
    test, roc = None, None
    if sel.score_test:  # sealed (score_test=false): test rows are never scored
        spec = EvalSpec("test", (threshold,), sel.min_recall, predictions=job.out / "test_predictions.parquet")
        t = evaluate(job.dmp, data, spec, batch, env, job.out, job.cold)
        test = {**t.summary.report(threshold), **t.ranking}
        roc = (*t.summary.roc_curve(), test["auc"])
    report = {
        **job.report,
        "best_epoch": prog.best_epoch,
        "best_step": prog.best_step,
        "best_checkpoint": str(best_path),
        "val": val,
        "test": test,
        "throughput": {"train_examples_per_s": prog.train_examples / max(prog.train_seconds, 1e-9)},
        "losses": prog.best_losses,
        "steps": prog.step,
        "resumed_from": prog.resumed_from,
        "seconds": time.time() - job.t_start,
        "fingerprint": job.fingerprint,
    }
    return report, roc


def cleanup(job: Job, report: dict[str, Any], roc: Roc | None) -> dict[str, Any]:
    """Rank 0 writes the figures, the test predictions and report.json (last: it marks
    the run finished); every rank returns the report."""
    if job.env.is_main:
        write_plots(job.out, roc)  # sealed runs write no test figure
        write_json_atomic(job.out / "report.json", report)
        test = report["test"]
        tested = (
            f"test auc {test['auc']:.4f} acc {test['accuracy']:.4f} fpr {test['fpr']:.4f}"
            if test is not None
            else "test sealed (score_test=false)"
        )
        print(f"train: best epoch {report['best_epoch']}  val auc {report['val']['auc']:.4f}  {tested}", flush=True)
    torch.distributed.barrier()
    return report


def run(cfg: TrainConfig) -> dict[str, Any]:
    """Train, select on val, report test. Returns the report (on every rank).

    The recipe: `setup` (or reuse a finished run) -> `train` -> `evaluate_best` ->
    `cleanup`; a paused run returns its status instead of a report.
    """
    quiet_known_warnings()
    env = init_distributed(cfg.device)
    try:
        job = setup(cfg, env)
        if not isinstance(job, Job):
            return job  # a finished run of this fingerprint
        if train(job):
            torch.distributed.barrier()
            return {"status": "paused", "epoch": job.prog.epoch, "step": job.prog.step, "fingerprint": job.fingerprint}
        return cleanup(job, *evaluate_best(job))
    finally:
        shutdown(env)


@record
def main(argv: list[str] | None = None, prog: str = "dlrrec train") -> int:
    return run_job(prog, __doc__ or "", TrainConfig, "train", run, argv)


if __name__ == "__main__":
    sys.exit(main())
