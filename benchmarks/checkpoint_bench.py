"""python benchmarks/checkpoint_bench.py [--rows 1000000 4000000 8000000] [--dim 32]

Extra host memory of a checkpoint save and load as the largest table grows, 2 gloo
ranks: sharded tables saved whole (one DCP item per shard, as before e0dd0cc) against
saved in row chunks of `trainer.checkpoint.SAVE_CHUNK_BYTES` (16 MiB).

Each rank runs a DistributedModelParallel of one EmbeddingBagCollection with the fused
row-wise Adagrad the trainer uses: a `rows` x `dim` float32 table, placed table-wise on
rank 0 by the planner, and a 1,000-row table on rank 1. The tables are filled (so their
pages are resident), then `trainer.checkpoint.save_checkpoint` and `load_checkpoint` run
once per mode. Before each call the rank's peak RSS is reset (/proc/self/clear_refs 5);
the figure is the peak over the call minus the RSS before it. Both modes load their
checkpoint back and must give the same table. Never run as a test.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def rss_mib() -> tuple[float, float]:
    """(VmRSS, VmHWM) of this process in MiB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return tuple(int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM"))  # type: ignore[return-value]


def extra_peak(call: Callable[..., Any], *args: Any) -> float:
    """MiB of peak RSS above the RSS before `call(*args)`."""
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = rss_mib()[0]
    call(*args)
    return rss_mib()[1] - before


def build(rows: int, dim: int):
    """(DMP, CombinedOptimizer) of a two-table EBC with the trainer's fused row-wise Adagrad."""
    import torch
    from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
    from torchrec.distributed import DistributedModelParallel
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
    from torchrec.optim.keyed import CombinedOptimizer
    from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

    from trainer.distributed import DistEnv
    from trainer.main import plan_sharding

    tables = [EmbeddingBagConfig(name=f"t{j}", embedding_dim=dim, num_embeddings=n, feature_names=[f"f{j}"])
              for j, n in enumerate((rows, 1000, 1000, 1000))]  # fmt: skip
    ebc = EmbeddingBagCollection(tables=tables, device=torch.device("meta"))
    apply_optimizer_in_backward(RowWiseAdagrad, ebc.parameters(), {"lr": 0.05})
    env = DistEnv(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), 0, torch.device("cpu"), "gloo", False)
    dmp = DistributedModelParallel(module=ebc, device=env.device, plan=plan_sharding(ebc, tables, env))
    for v in dmp.state_dict().values():  # touch every page of the local shards
        for shard in getattr(v, "local_shards", list)():
            shard.tensor.uniform_(-1, 1)
    return dmp, CombinedOptimizer([dmp.fused_optimizer])


def rank_main(rows: int, dim: int, chunk: int, work: Path) -> dict:
    import torch

    import trainer.checkpoint as ck

    torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank()
    dmp, opt = build(rows, dim)
    weight = next(k for k in dmp.state_dict() if k.endswith("t0.weight"))
    out: dict = {"plan": {k: v.sharding_type + str(v.ranks) for m in dmp.plan.plan.values() for k, v in m.items()}}
    ck.SAVE_CHUNK_BYTES = chunk
    for attempt in ("first", "again"):  # the second pair shows the first paid no one-off cost
        root = work / attempt
        saved = extra_peak(ck.save_checkpoint, root, 1, dmp, opt, {}, rank == 0)
        expect = [s.tensor.clone() for s in dmp.state_dict()[weight].local_shards()]
        for s in dmp.state_dict()[weight].local_shards():
            s.tensor.zero_()
        loaded = extra_peak(ck.load_checkpoint, root / "step_00000001", dmp, opt)
        same = all(torch.equal(a, s.tensor) for a, s in zip(expect, dmp.state_dict()[weight].local_shards()))
        out[attempt] = {"save_mib": saved, "load_mib": loaded, "same": same}
        del expect
    torch.distributed.destroy_process_group()
    return out


def run(rows: int, dim: int, chunk: int) -> list[dict]:
    """One 2-rank launch at `rows`, saving in chunks of `chunk` bytes: each rank's figures."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        procs = []
        for r in range(2):
            env = {**os.environ, "RANK": str(r), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "LOCAL_RANK": str(r),
                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
                   "PYTHONPATH": str(REPO)}  # fmt: skip
            cmd = [sys.executable, __file__, "--rank-main", str(rows), str(dim), str(chunk), tmp]
            procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        outs = [p.communicate() for p in procs]  # stderr: torchrec's planner warnings, shown on failure
        if any(p.returncode for p in procs):
            raise SystemExit(f"rows={rows}: a rank failed:\n" + "\n".join(err for _, err in outs))
    return [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--rank-main":
        rows, dim, chunk = map(int, sys.argv[2:5])
        print(json.dumps(rank_main(rows, dim, chunk, Path(sys.argv[5]))))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 4_000_000, 8_000_000])
    ap.add_argument("--dim", type=int, default=32)
    args = ap.parse_args()
    print(f"extra peak RSS of rank 0 (holds the big table) over a save / a load, MiB; dim {args.dim} float32")
    print(f"{'rows':>9} {'table MiB':>9} | {'whole save':>10} {'load':>6} | {'chunked save':>12} {'load':>6} | same")
    for n in args.rows:
        from trainer.checkpoint import SAVE_CHUNK_BYTES

        whole, chunked = (run(n, args.dim, c)[0] for c in (1 << 62, SAVE_CHUNK_BYTES))
        for attempt in ("first", "again"):
            w, c = whole[attempt], chunked[attempt]
            print(f"{n:>9} {n * args.dim * 4 / 2**20:>9.0f} | {w['save_mib']:>10.0f} {w['load_mib']:>6.0f} | "
                  f"{c['save_mib']:>12.0f} {c['load_mib']:>6.0f} | {w['same'] and c['same']}", flush=True)  # fmt: skip
        print(f"{'':>9} plan: {whole['plan']}")


if __name__ == "__main__":
    main()
