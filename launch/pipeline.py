"""Run every stage into one run root: `dlrrec pipeline --config configs/movielens-100k.yaml`.

fetch (when the raw tables are missing) -> features -> SWING -> train -> metrics table.
SWING and training are launched as TorchX apps (`local_cwd`, `-j 1xN` by default),
exactly as on a cluster; features run in this process. Each stage reuses an existing
output whose recorded config and input hashes match and refuses a mismatched one
unless `overwrite=true`.

Overrides address sections: `dlrrec pipeline --config C train.epochs=3 run_dir=runs/x`.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dlrrec.config import ConfigError, DataError, build_dataclass, load_raw, section_values
from dlrrec.entry import config_reference, job_parser, user_errors
from dlrrec.meta import TrainReport
from features.config import FeaturesConfig
from features.fetch import cache_dir, fetch_movielens_100k
from features.main import run as run_features
from launch import components
from launch.report import format_report, read_report
from similarity.config import SwingConfig
from similarity.redis_export import run as export_redis
from trainer.config import TrainConfig


@dataclass
class PipelineConfig:
    """How the pipeline launches its stages (section `pipeline:`).

    Args:
        run_dir: run root shared by every stage.
        seed: recorded; the stages read their own seeds from the common key.
        dataset: `movielens-100k` is fetched automatically when its raw tables are missing.
        scheduler: TorchX scheduler for the distributed stages.
        nproc_per_node: ranks of the SWING and training jobs.
        nnodes: nodes of the SWING and training jobs.
        swing_nproc: ranks of the SWING job (0 = nproc_per_node).
        log_dir: TorchX log folder (default: run_dir/logs).
        export_redis: at the end, export the SWING pairs to `similarity.redis_url`
            (password from $REDIS_PASSWORD), switching its `current` version atomically.
        image: container image of the SWING and training jobs ("" = the components'
            default, the CPU image); the `pipeline` TorchX component passes its own.
        cpu, mem_mb: CPUs and memory (MB) per node of the SWING and training jobs.
        gpu: GPUs per node of the training job (SWING is CPU work and gets none).
        resource: a named TorchX resource for both jobs (overrides cpu/gpu/mem_mb).
        mounts: TorchX mount tokens for both jobs, e.g.
            [type=volume, src=dlrrec-runs, dst=/app/runs] (the shared run root).
    """

    run_dir: str
    seed: int = 0
    dataset: str = "movielens-100k"
    scheduler: Literal["local_cwd", "local_docker", "kubernetes", "slurm"] = "local_cwd"
    nproc_per_node: int = 2
    nnodes: int = 1
    swing_nproc: int = 0
    log_dir: str = ""
    export_redis: bool = False
    image: str = ""
    cpu: int = 2
    gpu: int = 0
    mem_mb: int = 8192
    resource: str = ""
    mounts: list[str] = field(default_factory=list)

    def validate(self) -> None:
        if self.nproc_per_node < 1 or self.nnodes < 1 or self.swing_nproc < 0:
            raise ConfigError("pipeline.nproc_per_node/nnodes: must be >= 1")
        if self.cpu < 1 or self.gpu < 0 or self.mem_mb < 1:
            raise ConfigError("pipeline.cpu/mem_mb: must be >= 1, pipeline.gpu >= 0")


def stage_apps(pcfg: PipelineConfig, child_args: list[str]) -> list[tuple[str, str, Any]]:
    """(stage, nodes x ranks, TorchX AppDef) of the distributed stages, in order, each
    with the pipeline's image, resources and mounts (GPUs for training only)."""
    res: dict[str, Any] = {"cpu": pcfg.cpu, "memMB": pcfg.mem_mb, "h": pcfg.resource or None}
    res["mounts"] = list(pcfg.mounts) or None
    if pcfg.image:
        res["image"] = pcfg.image
    swing_j = f"{pcfg.nnodes}x{pcfg.swing_nproc or pcfg.nproc_per_node}"
    train_j = f"{pcfg.nnodes}x{pcfg.nproc_per_node}"
    return [
        ("similarity", swing_j, components.swing(*child_args, j=swing_j, gpu=0, **res)),
        ("train", train_j, components.train(*child_args, j=train_j, gpu=pcfg.gpu, **res)),
    ]


def _stage(name: str) -> None:
    print(f"\n=== {name} ===", flush=True)


def run(config: str | None, overrides: list[str]) -> TrainReport:
    """Validate the whole config up front, then run the stages in order."""
    bare = [o for o in overrides if "=" in o and "." not in o.split("=", 1)[0]]
    bad = [o for o in bare if o.split("=", 1)[0] not in ("run_dir", "seed", "dataset")]
    if bad:
        raise ConfigError(
            f"override {bad[0]!r}: pipeline overrides name their section, e.g. train.epochs=3"
        )
    raw = load_raw(config, overrides, None)
    pcfg = build_dataclass(PipelineConfig, section_values(raw, "pipeline"), "pipeline")
    fcfg = build_dataclass(FeaturesConfig, section_values(raw, "features"), "features")
    scfg = build_dataclass(SwingConfig, section_values(raw, "similarity"), "similarity")
    if pcfg.export_redis and not scfg.redis_url:
        raise ConfigError("pipeline.export_redis: needs similarity.redis_url (e.g. redis://127.0.0.1:6379/0)")
    build_dataclass(TrainConfig, section_values(raw, "train"), "train")
    child_args = (["--config", str(config)] if config else []) + list(overrides)
    run_dir = Path(pcfg.run_dir)
    log_dir = pcfg.log_dir or str(run_dir / "logs")
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    raw_dir = Path(fcfg.raw_dir)
    if not (raw_dir / "interactions.parquet").is_file():
        if pcfg.dataset != "movielens-100k":
            raise DataError(f"{raw_dir}: no interactions.parquet, and only movielens-100k is fetched automatically")
        _stage(f"fetch {pcfg.dataset} -> {raw_dir}")
        t = time.time()
        fetch_movielens_100k(raw_dir, cache_dir())
        timings["fetch"] = time.time() - t

    _stage("features")
    t = time.time()
    run_features(fcfg)
    timings["features"] = time.time() - t

    for name, j, app in stage_apps(pcfg, child_args):
        _stage(f"{name} (torchx -s {pcfg.scheduler} -j {j})")
        t = time.time()
        result = components.launch_and_wait(app, pcfg.scheduler, log_dir=log_dir)
        timings[name] = time.time() - t
        if not result.ok:
            why = result.error or f"job {result.app_handle} ended {result.state}"
            raise DataError(f"stage {name} failed: {why} (logs under {log_dir})")

    report = read_report(run_dir)
    if pcfg.export_redis:
        _stage(f"export SWING pairs to Redis (prefix {scfg.redis_prefix})")
        t = time.time()
        export_redis(scfg)
        timings["redis"] = time.time() - t
    _stage("report")
    print(format_report(report, timings), flush=True)
    return report


def main(argv: list[str] | None = None, prog: str = "dlrrec pipeline") -> int:
    epilog = "\n\n".join(
        config_reference(cls, section)
        for cls, section in (
            (PipelineConfig, "pipeline"),
            (FeaturesConfig, "features"),
            (SwingConfig, "similarity"),
            (TrainConfig, "train"),
        )
    )
    args = job_parser(prog, __doc__ or "", epilog).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with user_errors(prog):
        run(args.config, args.overrides)
    return 0


if __name__ == "__main__":
    sys.exit(main())
