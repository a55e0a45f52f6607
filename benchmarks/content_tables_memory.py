"""python benchmarks/content_tables_memory.py [--items 200000] [--users 50000] [--row-group 65536]

Per-rank memory of the frozen entity-vector tables (`trainer/content_tables.py`) at 1
and 2 real gloo ranks, in one run. A synthetic catalogue (items and users x 384 float16,
ids shuffled within the file) is written to Parquet; each rank builds the two FP16 tables
on `meta`, lets DistributedModelParallel shard them row-wise, and fills its own shard
from the file. Printed per rank: the rows and bytes of its local shards, and the growth
of its resident set (VmRSS) and its peak (VmHWM, reset before the build) over the build
and fill, next to the bytes a full host copy of the catalogue (the replaced design) would
take on every rank. The peak's excess over the tables is one Parquet row group being read
(see `--row-group`) plus fixed setup.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

C = 384


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def write_catalogue(folder: Path, n: dict[str, int], row_group: int) -> None:
    rng = np.random.default_rng(0)
    for entity, count in n.items():
        ids = rng.permutation(count)
        vec = rng.normal(size=(count, C)).astype(np.float16)
        table = pa.table(
            {
                f"{entity}_id": pa.array(ids, pa.int64()),
                f"{entity}_text": pa.FixedSizeListArray.from_arrays(pa.array(vec[ids].reshape(-1)), C),
            }
        )
        pq.write_table(table, folder / f"{entity}s.parquet", row_group_size=row_group)


def measure(rank: int, folder: str, n: dict[str, int]) -> dict[str, float]:
    import torch
    import torch.distributed as dist
    from torch import nn
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology

    from trainer.content_tables import (
        ContentTables,
        ParquetColumn,
        fill_content_tables,
        local_shards,
        table_constraints,
    )
    from trainer.distributed import init_distributed, shutdown

    env = init_distributed("cpu")
    try:
        cols = {
            f"{e}_text": ParquetColumn.scan(Path(folder) / f"{e}s.parquet", e, f"{e}_text", count, C)
            for e, count in n.items()
        }
        pa.default_memory_pool().release_unused()
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM: the peak from here on
        rss0 = _status("VmRSS")

        class Holder(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.content_tables = ContentTables({c: col.n for c, col in cols.items()}, C, torch.device("meta"))

        planner = EmbeddingShardingPlanner(
            topology=Topology(world_size=env.world_size, compute_device="cpu"), constraints=table_constraints(list(cols))
        )
        model = Holder()
        plan = planner.collective_plan(model, None, dist.GroupMember.WORLD)
        dmp = DistributedModelParallel(model, device=env.device, plan=plan)
        fill_content_tables(dmp, cols)
        dist.barrier()
        pa.default_memory_pool().release_unused()  # arrow's allocator keeps freed batches
        shards = local_shards(dmp)
        return {
            "rows": sum(w.shape[0] for p in shards.values() for _, w in p),
            "bytes": sum(w.numel() * w.element_size() for p in shards.values() for _, w in p),
            "rss_growth": _status("VmRSS") - rss0,
            "peak_growth": _status("VmHWM") - rss0,
        }
    finally:
        shutdown(env)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=200_000)
    p.add_argument("--users", type=int, default=50_000)
    p.add_argument("--row-group", type=int, default=65_536, help="Parquet rows per row group")
    args = p.parse_args()
    from dist_helpers import run_ranks

    n = {"item": args.items, "user": args.users}
    full = sum(n.values()) * C * 2
    with tempfile.TemporaryDirectory() as d:
        write_catalogue(Path(d), n, args.row_group)
        print(f"catalogue: {args.items:,} items + {args.users:,} users x {C} fp16 = {full / 2**20:,.1f} MiB "
              f"(a full host copy on every rank, the replaced design); Parquet row groups of {args.row_group:,}")  # fmt: skip
        for world in (1, 2):
            for r, m in enumerate(run_ranks(measure, world, d, n)):
                print(f"  {world} rank(s), rank {r}: {m['rows']:,} rows, tables {m['bytes'] / 2**20:,.1f} MiB "
                      f"({m['bytes'] / full:.2f} of the catalogue); RSS +{m['rss_growth'] / 2**20:,.1f} MiB, "
                      f"peak +{m['peak_growth'] / 2**20:,.1f} MiB over build and fill")  # fmt: skip


if __name__ == "__main__":
    main()
