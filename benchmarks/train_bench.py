"""python benchmarks/train_bench.py [--cases a,b] [--steps 10] [--rounds 3] [--batch-size-b 4096] [--ranks-b 2]

Our training step against a plain-PyTorch implementation of the same model, in one
process, one run, on CPU:

- ours: the real trainer (`trainer.main.build_model`): EmbeddingBagCollection built on
  `meta`, the sparse optimizer fused into the backward (fbgemm's exact row-wise
  Adagrad on CPU, `sparse_optimizer: auto`), planned and wrapped in
  DistributedModelParallel on a 1-rank gloo group, dense Adam in a CombinedOptimizer,
  stepped by TrainPipelineSparseDist exactly as the trainer's loop does;
- plain: the same DLRREC dense/projection/interaction/over archs and the same
  DLRRECTrain losses, with one `nn.EmbeddingBag(sparse=True)` per table and
  `torch.optim.Adam` for the dense part. Sparse optimizer: `plain-rowwise` is
  fbgemm's update rule (exact row-wise Adagrad, eps 1e-8) written in plain PyTorch on
  the coalesced sparse gradient, i.e. the same math, checked below; `plain-adagrad`
  is stock `torch.optim.Adagrad` (element-wise, the closest stock optimizer that takes
  sparse gradients; different math and D-times more optimizer state);
  `plain-sparseadam` is stock `torch.optim.SparseAdam`, the paper's optimizer (Adam)
  as plain PyTorch trains sparse embeddings (lazy Adam; different math again: two
  D-wide states per row). Ours runs row-wise Adagrad on CPU because fbgemm has no
  CPU Adam, so only plain-rowwise is the same math.

Cases:
  (a) the ML-100K config (configs/movielens-100k.yaml: 7 tables, D = 32, two 384-d
      text towers, InfoNCE on) on the real feature tables under
      runs/movielens-100k/{features,similarity} when present, else a seeded synthetic
      stand-in of the same shapes (the header says which);
  (b) synthetic large tables: 8 tables x 1M rows x D = 64, 10 ids per sample and
      table (power-law: Zipf-like rank**-1.05, ranks shuffled over rows, mean pooling),
      13 dense features, no towers, BCE only.

For (b), ours also runs sharded: `--ranks-b` (default 2) spawned gloo ranks on this
machine, the torch threads split between them, the planner's table-wise plan, each rank
its slice of the same global batch (`train_batches`), as the trainer runs under torchrun;
a step is timed on rank 0 between barriers, so it ends when the slowest rank's does. The
plain baselines cannot shard and use all threads in one process.

Batches are built with the trainer's own `train_batches` before timing (its rate is
printed separately: the trainer's loop does not overlap it). Each round times
`--steps` steps of every implementation back to back, after `--warmup` steps; the
figure is the median step time over all rounds. Starting from identical weights,
ours and plain-rowwise must follow the same loss trajectory (max |dloss| printed).
A third model, the dense-only floor (the same step with the sparse arch replaced by a
fixed [B, F, D] tensor), gives the cost the embeddings add: step - floor is printed as
the embedding-work-only ratio next to the whole-step ratios. `--profile` prints
torch.profiler's top ops of each implementation.

Bytes moved per sample (embedding traffic only): the forward reads every id's row
(D x 4 B), and the update reads and writes every distinct row of the batch once
(2 x D x 4 B) plus its optimizer state (row-wise Adagrad: 2 x 4 B; element-wise
Adagrad: 2 x D x 4 B). The gather bound is measured in the run: `F.embedding_bag`
forward (sum) over the same tables and ids, rows read x D x 4 B per second.

Timings are wall clock on whatever else the machine is doing; the load average and
thread count are printed with them (`--threads 1` is steadier on a shared machine).
Defaults take about 2 minutes on an idle 2-core machine (more on a busy one) and 15 GiB
peak RSS.  Never run as a test.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn
from torch.nn import functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dlrrec.config import load_config  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402
from trainer.data import (  # noqa: E402
    Batch,
    SplitArrays,
    TrainingData,
    scan_parts,
    train_batches,
)
from trainer.distributed import DistEnv, init_distributed, shutdown  # noqa: E402
from trainer.main import (  # noqa: E402
    build_arch_sizes,
    build_contrastive_terms,
    build_loss_weights,
    build_model,
    build_tables,
    quiet_known_warnings,
    read_variant_data,
    resolve_sparse_optimizer,
)
from trainer.model import DLRREC, DLRRECTrain  # noqa: E402
from trainer.neighbor_store import NeighborStore, open_neighbors  # noqa: E402
from trainer.vector_store import VectorStore, store_header, write_store  # noqa: E402

# ---------------------------------------------------------------------------- data


def zipf_ids(n: int, rows: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """n ids in [0, rows) with p(rank r) ~ r**-alpha, ranks shuffled over the rows."""
    cdf = np.cumsum((np.arange(rows) + 1.0) ** -alpha)
    ranks = np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right")
    return rng.permutation(rows)[np.minimum(ranks, rows - 1)]


def large_table_data(
    n_rows: int, tables: int, rows: int, ids_per_sample: int, n_dense: int, alpha: float, seed: int
) -> TrainingData:
    """Config (b) as a TrainingData: multi-valued power-law features, no towers."""
    rng = np.random.default_rng(seed)
    names = [f"f{t}" for t in range(tables)]
    offsets = np.arange(n_rows + 1, dtype=np.int64) * ids_per_sample
    multi = {n: (offsets, zipf_ids(n_rows * ids_per_sample, rows, alpha, rng)) for n in names}
    split = SplitArrays(
        n=n_rows,
        user_id=rng.integers(0, rows, n_rows),
        item_id=rng.integers(0, rows, n_rows),
        label=(rng.random(n_rows) < 0.3).astype(np.float32),
        dense=rng.normal(size=(n_rows, n_dense)).astype(np.float32),
        single={},
        multi=multi,
        user_content={},
    )
    meta = {
        "dataset": "synthetic-large",
        "sparse_features": {
            n: {"vocab_size": rows, "multi_valued": True, "max_len": ids_per_sample} for n in names
        },
        "dense_features": [f"d{i}" for i in range(n_dense)],
        "content_dim": 384,
    }
    return TrainingData(
        features_meta=meta, similarity_meta=None, **as_parts(split, meta, rows, rows),
        sparse_names=names, sparse_vocab={n: rows for n in names}, dense_names=list(meta["dense_features"]),
        towers=[], entity_columns={}, entity_tables=[], item_neighbors=None, user_neighbors=None,
    )  # fmt: skip


def as_parts(split: SplitArrays, meta: dict[str, Any], n_users: int, n_items: int) -> dict[str, Any]:
    """`split` written as the train examples of a temporary features folder (the trainer
    streams Parquet blocks): TrainingData's `parts`, `row_content` and `train_rows`."""
    cols: dict[str, Any] = {"user_id": split.user_id, "item_id": split.item_id, "label": split.label}
    cols |= {n: split.dense[:, k] for k, n in enumerate(meta["dense_features"])} | split.single
    for n, (offsets, values) in split.multi.items():
        cols[n] = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values))
    for n, vec in split.user_content.items():
        cols[n] = pa.FixedSizeListArray.from_arrays(pa.array(vec.reshape(-1)), vec.shape[1])
    if split.rating is not None:
        cols["rating"] = split.rating
    root = Path(tempfile.mkdtemp(prefix="train_bench_"))
    (root / "examples" / "train").mkdir(parents=True)
    pq.write_table(pa.table(cols), root / "examples" / "train" / "part-00000.parquet", row_group_size=8192)
    return {
        "parts": {"train": scan_parts(root, "train", meta, list(split.user_content))},
        "row_content": list(split.user_content),
        "train_rows": {"user": np.bincount(split.user_id, minlength=n_users),
                       "item": np.bincount(split.item_id, minlength=n_items)},
    }  # fmt: skip


def array_store(name: str, values: np.ndarray) -> VectorStore:
    """[n, C] float16 entity vectors as a temporary disk-backed store (what the trainer reads)."""
    path = Path(tempfile.mkdtemp(prefix="train_bench_")) / f"{name}.f16"
    header = store_header("synthetic", name, values.shape[0], values.shape[1], None)
    write_store(path, [(np.arange(values.shape[0]), values)], header)
    return VectorStore(path, header)


# ML-100K's feature shapes (runs/movielens-100k/features/_meta.json, random split)
ML100K_SPARSE = {
    "age_bucket": (8, 1), "categories": (20, 6), "gender": (3, 1), "item_id": (1682, 1),
    "occupation": (22, 1), "user_id": (943, 1), "zip_prefix": (20, 1),
}  # fmt: skip


def ml100k_standin(n_rows: int, seed: int) -> TrainingData:
    """A seeded synthetic TrainingData of ML-100K's shapes (tables, towers, SWING top-50)."""
    rng = np.random.default_rng(seed)
    n_users, n_items, c = 943, 1682, 384
    users, items = rng.integers(0, n_users, n_rows), rng.integers(0, n_items, n_rows)
    single, multi = {}, {}
    for name, (vocab, max_len) in ML100K_SPARSE.items():
        if max_len > 1:
            lengths = rng.integers(1, max_len + 1, n_items)[items]
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            multi[name] = (offsets, rng.integers(1, vocab, int(offsets[-1])))
        elif name not in ("user_id", "item_id"):
            single[name] = rng.integers(0, vocab, n_rows)
    vec = {
        e: rng.normal(size=(n, c)).astype(np.float16)
        for e, n in (("user", n_users), ("item", n_items))
    }

    def neighbours(n: int, kind: str) -> NeighborStore:
        """50 neighbours per anchor with equal scores, as a SWING part and its store."""
        k = 50
        root = Path(tempfile.mkdtemp(prefix="train_bench_"))
        (root / kind).mkdir()
        pq.write_table(pa.table({
            "anchor": np.repeat(np.arange(n), k), "neighbor": rng.integers(0, n, n * k),
            "score": np.ones(n * k, np.float32), "rank": np.tile(np.arange(k, dtype=np.int16), n),
        }), root / kind / "part-00000.parquet")  # fmt: skip
        return open_neighbors(root, kind, "synthetic", n)

    rating = rng.integers(1, 6, n_rows).astype(np.float32)  # 1-5 stars, label = rating >= 4
    split = SplitArrays(
        n=n_rows, user_id=users, item_id=items, label=(rating >= 4).astype(np.float32),
        dense=rng.normal(size=(n_rows, 2)).astype(np.float32), single=single, multi=multi,
        user_content={"user_text": vec["user"][users]}, rating=rating,
    )  # fmt: skip
    meta = {
        "dataset": "movielens-100k (synthetic stand-in)",
        "sparse_features": {
            n: {"vocab_size": v, "multi_valued": m > 1, "max_len": m}
            for n, (v, m) in ML100K_SPARSE.items()
        },
        "dense_features": ["year", "age"],
        "content_dim": c,
    }
    return TrainingData(
        features_meta=meta, similarity_meta=None, **as_parts(split, meta, n_users, n_items),
        sparse_names=list(ML100K_SPARSE), sparse_vocab={n: v for n, (v, _) in ML100K_SPARSE.items()},
        dense_names=["year", "age"], towers=[("user", "user_text"), ("item", "item_text")],
        entity_columns={f"{e}_text": array_store(f"{e}_text", vec[e]) for e in ("user", "item")},
        entity_tables=["user_text", "item_text"],
        item_neighbors=neighbours(n_items, "item_item"), user_neighbors=neighbours(n_users, "user_user"),
    )  # fmt: skip


# ---------------------------------------------------------------------------- plain PyTorch


class PlainSparseArch(nn.Module):
    """One `nn.EmbeddingBag(sparse=True)` per table; input: per-feature (values, offsets).

    Args:
        tables: the EmbeddingBagConfigs of the trainer (one feature per table).

    Example::

        arch = PlainSparseArch(build_tables(data, 32))
        emb = arch([(values, offsets), ...])  # [B, F, D]
    """

    def __init__(self, tables: list[Any]) -> None:
        super().__init__()
        self.bags = nn.ModuleDict(
            {
                t.name: nn.EmbeddingBag(
                    t.num_embeddings, t.embedding_dim, mode=t.pooling.name.lower(), sparse=True
                )
                for t in tables
            }
        )

    def forward(self, features: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Returns: [B, F, D]."""
        return torch.stack([bag(v, o) for bag, (v, o) in zip(self.bags.values(), features)], dim=1)


class FixedSparseArch(nn.Module):
    """A stand-in for the sparse arch that returns a fixed [B, F, D] tensor: no embedding work.

    Used only to time the step's floor (dense archs, interaction, losses, dense Adam).
    """

    def __init__(self, batch: int, features: int, dim: int) -> None:
        super().__init__()
        self.value: torch.Tensor
        self.register_buffer("value", torch.randn(batch, features, dim) * 0.1)

    def forward(self, features: object) -> torch.Tensor:
        """Returns: [B, F, D]."""
        return self.value


class PlainRowWiseAdagrad(torch.optim.Optimizer):
    """fbgemm's EXACT_ROWWISE_ADAGRAD (no weight decay) on sparse gradients, in plain PyTorch.

    Per distinct row r of the batch with summed gradient g_r:
    state_r += mean(g_r ** 2);  w_r -= lr * g_r / (sqrt(state_r) + eps).
    """

    def __init__(self, params: Any, lr: float, eps: float = 1e-8) -> None:
        super().__init__(params, {"lr": lr, "eps": eps})
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["sum"] = torch.zeros(p.shape[0], dtype=p.dtype)

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.coalesce()
                rows, values = g.indices()[0], g.values()
                state = self.state[p]["sum"]
                state.index_add_(0, rows, values.pow(2).mean(1))
                scale = group["lr"] / (state.index_select(0, rows).sqrt() + group["eps"])
                p.index_add_(0, rows, values * scale.neg().unsqueeze(1))


def plain_batch(batch: Batch) -> Batch:
    """The same batch with the KJT replaced by per-feature (values, offsets) tensors."""
    kjt = batch.sparse
    per_key = []
    for values, lengths in zip(
        kjt.values().split(kjt.length_per_key()), kjt.lengths().split(kjt.stride())
    ):
        offsets = torch.zeros(lengths.numel(), dtype=torch.int64)
        offsets[1:] = torch.cumsum(lengths[:-1], 0)
        per_key.append((values, offsets))
    return dataclasses.replace(batch, sparse=per_key)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- runners


class Runner:
    """One implementation: `step()` trains on the next batch and returns its loss."""

    name: str
    opt_state_bytes_per_row: int

    def step(self) -> float:
        raise NotImplementedError


class Ours(Runner):
    def __init__(
        self, cfg: TrainConfig, data: TrainingData, env: DistEnv, batches: list[Batch]
    ) -> None:
        from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

        self.sparse_opt = resolve_sparse_optimizer(cfg.sparse_optimizer, env.device)
        self.dmp, opt, self.plan = build_model(cfg, data, env, 1.0, self.sparse_opt)
        self.pipeline = TrainPipelineSparseDist(self.dmp, opt, env.device, execute_all_batches=True)
        self.it: Iterator[Batch] = itertools.cycle(batches)
        self.name = f"ours (TorchRec, fused {self.sparse_opt})"
        self.opt_state_bytes_per_row = 4  # one float per row
        self.dmp.train()

    def step(self) -> float:
        loss = self.pipeline.progress(self.it)[0]
        return float(loss)

    def tables(self) -> dict[str, torch.Tensor]:
        """{table name: full weight} (1 rank: each table is one local shard)."""
        out = {}
        for key, value in self.dmp.state_dict().items():
            if hasattr(value, "local_shards"):
                shards = value.local_shards()
                assert len(shards) == 1 and shards[0].tensor.shape == value.size(), key
                out[key.split(".")[-2]] = shards[0].tensor
        return out

    def dense_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.dmp.state_dict().items() if not hasattr(v, "local_shards")}


class Plain(Runner):
    def __init__(
        self, cfg: TrainConfig, data: TrainingData, batches: list[Batch], optimizer: str
    ) -> None:
        from torchrec.modules.embedding_modules import EmbeddingBagCollection

        tables = build_tables(data, cfg.embedding_dim)
        model = DLRREC(
            EmbeddingBagCollection(tables=tables, device=torch.device("meta")),
            dense_in=len(data.dense_names),
            towers=len(data.towers),
            content_dim=data.content_dim,
            sizes=build_arch_sizes(cfg),
        )
        if optimizer == "dense-only":
            model.sparse_arch = FixedSparseArch(cfg.batch_size, len(tables), cfg.embedding_dim)
        else:
            model.sparse_arch = PlainSparseArch(tables)
        # the frozen entity vectors come with the batches (`Batch.vectors`), as in ours
        # the trainer's loss weights and InfoNCE terms (chunking, logQ, extra negatives)
        self.model = DLRRECTrain(
            model, build_loss_weights(cfg, data, pos_weight=1.0), build_contrastive_terms(cfg, data),
            data.tower_spec(),
        )  # fmt: skip
        self.bag_params = list(model.sparse_arch.parameters())
        ids = {id(p) for p in self.bag_params}
        dense = [p for p in self.model.parameters() if id(p) not in ids]
        self.dense_opt = torch.optim.Adam(dense, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.sparse_opt: torch.optim.Optimizer | None
        if optimizer == "dense-only":
            self.sparse_opt = None
            self.opt_state_bytes_per_row = 0
            self.short = "dense-only"
            self.name = "dense-only floor (same step, no embedding work)"
        elif optimizer == "rowwise":
            self.sparse_opt = PlainRowWiseAdagrad(self.bag_params, lr=cfg.sparse_lr)
            self.opt_state_bytes_per_row = 4
            self.short = "plain-rowwise"
            self.name = "plain-rowwise (EmbeddingBag, row-wise Adagrad)"
        elif optimizer == "adagrad":
            self.sparse_opt = torch.optim.Adagrad(self.bag_params, lr=cfg.sparse_lr, eps=1e-8)
            self.opt_state_bytes_per_row = 4 * cfg.embedding_dim
            self.short = "plain-adagrad"
            self.name = "plain-adagrad (EmbeddingBag, torch Adagrad)"
        elif optimizer == "sparseadam":
            self.sparse_opt = torch.optim.SparseAdam(self.bag_params, lr=cfg.sparse_lr)
            self.opt_state_bytes_per_row = 2 * 4 * cfg.embedding_dim
            self.short = "plain-sparseadam"
            self.name = "plain-sparseadam (EmbeddingBag, torch SparseAdam)"
        else:
            raise SystemExit(f"--baselines: unknown {optimizer!r} (known: rowwise, adagrad, sparseadam)")
        self.it = itertools.cycle([plain_batch(b) for b in batches])
        self.model.train()

    def load_from(self, ours: Ours) -> None:
        """Copy ours' weights (tables and dense) so both start from the same point."""
        with torch.no_grad():
            if isinstance(self.model.model.sparse_arch, PlainSparseArch):
                for name, w in ours.tables().items():
                    self.model.model.sparse_arch.bags[name].weight.copy_(w)
            own = self.model.state_dict()
            for k, v in ours.dense_state().items():
                own[k].copy_(v)

    def step(self) -> float:
        batch = next(self.it)
        self.dense_opt.zero_grad(set_to_none=True)
        if self.sparse_opt is not None:
            self.sparse_opt.zero_grad(set_to_none=True)
        loss = self.model(batch)[0]
        loss.backward()
        if self.sparse_opt is not None:
            self.sparse_opt.step()
        self.dense_opt.step()
        return float(loss.detach())


# ---------------------------------------------------------------------------- sharded (b)


def _sharded_rank(rank: int, world: int, port: int, threads: int, a: dict[str, Any], q: Any) -> None:
    """One rank of ours on `world` gloo ranks for case (b); rank 0 reports step times."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))  # fmt: skip
    torch.set_num_threads(threads)
    quiet_known_warnings()
    warnings.filterwarnings("ignore", category=UserWarning)
    env = init_distributed("cpu")
    try:
        n = a["warmup"] + a["steps"]
        data = large_table_data(a["batch"] * n, a["tables"], a["rows"], a["ids"], 13, a["alpha"], 0)
        cfg = case_b_config(a["batch"], a["dim"])
        batches = list(train_batches(data, cfg.batch_size, rank, world, 0, cfg.seed, False, n))
        ours = Ours(cfg, data, env, batches)
        plan = sorted({p.sharding_type for m in ours.plan.plan.values() for p in m.values()})
        for _ in range(a["warmup"]):
            ours.step()
        times = []
        for _ in range(a["rounds"] * a["steps"]):
            torch.distributed.barrier()
            times.append(timed(ours.step))
            torch.distributed.barrier()
        if rank == 0:
            q.put((times, plan))
    finally:
        shutdown(env)


def sharded_step_times(world: int, threads: int, a: dict[str, Any]) -> tuple[list[float], list[str]]:
    """Step times of ours on `world` spawned gloo ranks (rank 0's clock, barriers around
    each step, so a step ends when the slowest rank's does) and the plan's sharding types."""
    import multiprocessing as mp
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.SimpleQueue()
    procs = [ctx.Process(target=_sharded_rank, args=(r, world, port, threads, a, q)) for r in range(world)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    codes = [proc.exitcode for proc in procs]
    if codes != [0] * world or q.empty():
        raise SystemExit(f"--ranks-b {world}: the ranks exited with {codes}")
    return q.get()


def case_b_config(batch: int, dim: int) -> TrainConfig:
    return TrainConfig(
        run_dir="", batch_size=batch, embedding_dim=dim,
        modalities=[], contrastive=False, emb_l2=0.0, dropout=0.0,
    )  # fmt: skip


# ---------------------------------------------------------------------------- measurement


def timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def embedding_traffic(batches: list[Batch], dim: int) -> tuple[float, float]:
    """Mean (ids, distinct rows) per sample over `batches`, summed over tables."""
    ids = uniq = 0.0
    n = 0
    for b in batches:
        kjt = b.sparse
        for values in kjt.values().split(kjt.length_per_key()):
            ids += values.numel()
            uniq += torch.unique(values).numel()
        n += kjt.stride()
    return ids / n, uniq / n


def gather_bound(tables: dict[str, torch.Tensor], batches: list[Batch], rounds: int) -> float:
    """Random-gather bandwidth (bytes/s): F.embedding_bag forward over the same tables and ids."""
    plain = [plain_batch(b).sparse for b in batches]
    weights = list(tables.values())
    row_bytes = weights[0].shape[1] * weights[0].element_size()
    n_ids = sum(v.numel() for feats in plain for v, _ in feats)

    def sweep() -> None:
        with torch.no_grad():
            for feats in plain:
                for w, (v, o) in zip(weights, feats):
                    F.embedding_bag(v, w, o, mode="sum")

    sweep()  # warm-up
    best = min(timed(sweep) for _ in range(max(rounds, 2)))
    return n_ids * row_bytes / best


def load_avg() -> str:
    return "load avg " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def run_case(
    label: str,
    source: str,
    cfg: TrainConfig,
    data: TrainingData,
    env: DistEnv,
    args: argparse.Namespace,
    sharded: tuple[str, list[float]] | None = None,
) -> list[tuple[str, ...]]:
    """`sharded`: (name, step times) of ours on several ranks, measured before this."""
    n_batches = args.warmup + args.steps
    t0 = time.perf_counter()
    batches = list(train_batches(data, cfg.batch_size, 0, 1, 0, cfg.seed, False, n_batches))
    load_rate = len(batches) * cfg.batch_size / (time.perf_counter() - t0)
    if len(batches) < n_batches:
        raise SystemExit(
            f"{label}: only {len(batches)} batches of {cfg.batch_size} rows; lower --steps"
        )
    ours = Ours(cfg, data, env, batches)
    runners: list[Runner] = [ours]
    for opt in args.baselines.split(","):
        p = Plain(cfg, data, batches, opt)
        p.load_from(ours)
        runners.append(p)
    floor = Plain(cfg, data, batches, "dense-only")
    floor.load_from(ours)
    runners.append(floor)

    # warm-up from identical weights: ours and plain-rowwise must agree step by step
    losses: dict[str, list[float]] = {r.name: [] for r in runners}
    for step in range(args.warmup):
        for r in runners:
            torch.manual_seed(step)  # the same dropout masks for every implementation
            losses[r.name].append(r.step())
    check = ""
    for r in runners[1:]:
        if isinstance(r, Plain) and isinstance(r.sparse_opt, PlainRowWiseAdagrad):
            diff = max(abs(a - b) for a, b in zip(losses[ours.name], losses[r.name]))
            check = (
                f"max |loss ours - loss plain-rowwise| over {args.warmup} warm-up steps: {diff:.2e}"
            )

    times: dict[str, list[float]] = {r.name: [] for r in runners}
    for _ in range(args.rounds):
        for r in runners:
            for _ in range(args.steps):
                times[r.name].append(timed(r.step))

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        for r in runners:
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(3):
                    r.step()
            print(f"\n[{label}] {r.name}: torch.profiler, 3 steps, top ops by self CPU time")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))

    ids_ps, uniq_ps = embedding_traffic(batches, cfg.embedding_dim)
    bound = gather_bound(ours.tables(), batches, args.rounds)
    d4 = cfg.embedding_dim * 4
    b = cfg.batch_size
    plain_meds = {
        r.short: statistics.median(times[r.name])
        for r in runners
        if isinstance(r, Plain) and r is not floor
    }
    rows = []
    timed_runs = [(r.name, times[r.name], r.opt_state_bytes_per_row) for r in runners if r is not floor]
    if sharded is not None:
        timed_runs.insert(1, (sharded[0], sharded[1], ours.opt_state_bytes_per_row))
    for name, ts, state_bytes in timed_runs:
        med = statistics.median(ts)
        rate = b / med
        bytes_ps = ids_ps * d4 + uniq_ps * (2 * d4 + 2 * state_bytes)
        ratios = " ".join(f"{plain_meds[k] / med:.2f}x" for k in sorted(plain_meds))
        rows.append((label, name, f"{rate:,.0f}", ratios, f"{bytes_ps / 1024:,.1f}",
                     f"{rate * bytes_ps / 1e9:.2f}", f"{100 * rate * bytes_ps / bound:.0f}%"))  # fmt: skip
    print(f"\n[{label}] {source}: batch {b}, {len(data.sparse_names)} tables "
          f"({sum(data.sparse_vocab.values()):,} rows, D={cfg.embedding_dim}), towers {len(data.towers)}, "
          f"InfoNCE {'on' if cfg.uses_contrastive else 'off'}; plan kernels "
          f"{sorted({p.compute_kernel for m in ours.plan.plan.values() for p in m.values()})}")  # fmt: skip
    print(
        f"  per sample: {ids_ps:.1f} ids, {uniq_ps:.1f} distinct rows (per batch, summed over tables)"
    )
    print(f"  gather bound (F.embedding_bag fwd, same tables and ids): {bound / 1e9:.2f} GB/s")
    print(
        f"  data loading (trainer.data.train_batches, not in the step times): {load_rate:,.0f} samples/s"
    )
    for name, ts in [(r.name, times[r.name]) for r in runners] + ([sharded] if sharded else []):
        print(f"  {name}: step median {1e3 * statistics.median(ts):.1f} ms "
              f"(min {1e3 * min(ts):.1f}, max {1e3 * max(ts):.1f}, n={len(ts)})")  # fmt: skip
    if check:
        print("  " + check)
    # the step minus the floor is the embedding work (lookup, backward, update, pipeline)
    t_floor = statistics.median(times[floor.name])
    t_ours = statistics.median(times[ours.name]) - t_floor
    for k, med in sorted(plain_meds.items()):
        print(f"  embedding work only (step - floor): {k} {1e3 * (med - t_floor):.1f} ms vs ours "
              f"{1e3 * t_ours:.1f} ms = {(med - t_floor) / t_ours:.2f}x")  # fmt: skip
    if sharded is not None:
        t_sh = statistics.median(sharded[1])
        print("  whole step, " + sharded[0] + ": "
              + ", ".join(f"{plain_meds[k] / t_sh:.2f}x {k}" for k in sorted(plain_meds)))  # fmt: skip
    print(f"  {load_avg()}")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--cases", default="a,b", help="a = ML-100K config, b = large synthetic tables")
    p.add_argument("--config", default=str(REPO / "configs" / "movielens-100k.yaml"))
    p.add_argument(
        "--run-dir", default=None, help="ML-100K run root (default: the config's run_dir)"
    )
    p.add_argument(
        "--baselines", default="rowwise,adagrad,sparseadam",
        help="plain sparse optimizers: rowwise, adagrad, sparseadam",
    )
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=10, help="timed steps per implementation per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size-b", type=int, default=4096)
    p.add_argument("--rows-b", type=int, default=1_000_000)
    p.add_argument("--tables-b", type=int, default=8)
    p.add_argument("--dim-b", type=int, default=64)
    p.add_argument("--ids-b", type=int, default=10)
    p.add_argument("--alpha-b", type=float, default=1.05, help="power-law exponent of (b)'s ids")
    p.add_argument(
        "--ranks-b", type=int, default=2,
        help="also time ours on (b) sharded over this many gloo ranks on this machine (0/1 = no)",
    )  # fmt: skip
    p.add_argument("--profile", action="store_true", help="also print torch.profiler top ops")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet_known_warnings()
    warnings.filterwarnings("ignore", category=UserWarning)
    env = init_distributed("cpu")
    rows: list[tuple[str, ...]] = []
    try:
        print(f"train_bench: torch {torch.__version__}, {torch.get_num_threads()} threads, "
              f"{os.cpu_count()} cores, 1-rank gloo group, {load_avg()}")  # fmt: skip
        if "a" in args.cases.split(","):
            cfg = load_config(TrainConfig, args.config, [], "train")
            if args.run_dir:
                cfg = dataclasses.replace(cfg, run_dir=args.run_dir)
            root = Path(cfg.run_dir)
            if not root.is_absolute():
                root = REPO / root
            if (root / "features" / "_meta.json").is_file() and (
                root / "similarity" / "_meta.json"
            ).is_file():
                cfg = dataclasses.replace(cfg, run_dir=str(root))
                data = read_variant_data(cfg)
                source = f"ML-100K, the real feature tables under {root}"
            else:
                print(
                    f"(a): no feature tables under {root}; using the synthetic stand-in of ML-100K's shapes"
                )
                data = ml100k_standin(80_000, cfg.seed)
                source = "ML-100K shapes, SYNTHETIC stand-in (no feature tables found)"
            rows += run_case("a", source, cfg, data, env, args)
        if "b" in args.cases.split(","):
            n_rows = args.batch_size_b * (args.warmup + args.steps)
            data = large_table_data(
                n_rows, args.tables_b, args.rows_b, args.ids_b, 13, args.alpha_b, 0
            )
            cfg = case_b_config(args.batch_size_b, args.dim_b)
            source = (
                f"synthetic large tables: {args.tables_b} x {args.rows_b:,} rows x D={args.dim_b}, "
                f"{args.ids_b} ids/sample/table, power law alpha={args.alpha_b}"
            )
            sharded = None
            if args.ranks_b > 1:
                # the same machine split into ranks: threads / ranks torch threads each
                per_rank = max(1, torch.get_num_threads() // args.ranks_b)
                a = {"batch": args.batch_size_b, "tables": args.tables_b, "rows": args.rows_b,
                     "ids": args.ids_b, "alpha": args.alpha_b, "dim": args.dim_b,
                     "warmup": args.warmup, "steps": args.steps, "rounds": args.rounds}  # fmt: skip
                ts, plan = sharded_step_times(args.ranks_b, per_rank, a)
                sharded = (f"ours, {args.ranks_b} ranks x {per_rank} thread(s) ({'/'.join(plan)})", ts)
            rows += run_case("b", source, cfg, data, env, args, sharded)
    finally:
        shutdown(env)
    head = (
        "case",
        "implementation",
        "samples/s",
        "speedup vs " + " ".join(sorted(args.baselines.split(","))),
        "KiB/sample",
        "GB/s",
        "of gather bound",
    )
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    print()
    for r in [head, *rows]:
        print(
            "  ".join(
                c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))
            )
        )
    print(
        "speedup vs X = median step time of plain-X / this implementation's; KiB/sample = "
        "embedding rows read + written incl. optimizer state; of gather bound = (KiB/sample x "
        "samples/s) / the in-run F.embedding_bag gather bandwidth."
    )


if __name__ == "__main__":
    main()
