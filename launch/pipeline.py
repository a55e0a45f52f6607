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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from launch.config import ConfigError, DataError, build_dataclass, load_raw, section_values
from launch.entry import config_reference, job_parser, user_errors


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

    def validate(self) -> None:
        if self.nproc_per_node < 1 or self.nnodes < 1 or self.swing_nproc < 0:
            raise ConfigError("pipeline.nproc_per_node/nnodes: must be >= 1")


def _stage(name: str) -> None:
    print(f"\n=== {name} ===", flush=True)


def run(config: str | None, overrides: list[str]) -> dict[str, Any]:
    """Validate the whole config up front, then run the stages in order."""
    from features.config import FeaturesConfig
    from similarity.config import SwingConfig
    from trainer.config import TrainConfig

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
        from features.fetch import cache_dir, fetch_movielens_100k

        fetch_movielens_100k(raw_dir, cache_dir())
        timings["fetch"] = time.time() - t

    _stage("features")
    t = time.time()
    from features.main import run as run_features

    run_features(fcfg)
    timings["features"] = time.time() - t

    from launch import components

    swing_n = pcfg.swing_nproc or pcfg.nproc_per_node
    for name, app in (
        ("similarity", components.swing(*child_args, j=f"{pcfg.nnodes}x{swing_n}")),
        ("train", components.train(*child_args, j=f"{pcfg.nnodes}x{pcfg.nproc_per_node}")),
    ):
        _stage(f"{name} (torchx -s {pcfg.scheduler} -j {app.roles[0].num_replicas}x{swing_n if name == 'similarity' else pcfg.nproc_per_node})")
        t = time.time()
        result = components.launch_and_wait(app, pcfg.scheduler, log_dir=log_dir)
        timings[name] = time.time() - t
        if not result.ok:
            why = result.error or f"job {result.app_handle} ended {result.state}"
            raise DataError(f"stage {name} failed: {why} (logs under {log_dir})")

    from launch.report import format_report, read_report

    report = read_report(run_dir)
    if pcfg.export_redis:
        _stage(f"export SWING pairs to Redis (prefix {scfg.redis_prefix})")
        t = time.time()
        from similarity.redis_export import run as export_redis

        export_redis(scfg)
        timings["redis"] = time.time() - t
    _stage("report")
    print(format_report(report, timings), flush=True)
    return report


def main(argv: list[str] | None = None, prog: str = "dlrrec pipeline") -> int:
    from features.config import FeaturesConfig
    from similarity.config import SwingConfig
    from trainer.config import TrainConfig

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
