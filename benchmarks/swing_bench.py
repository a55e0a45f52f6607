"""python benchmarks/swing_bench.py [--skip-redis] [--edges-large 1000000]

SWING side by side, measured in one run on seeded synthetic power-law graphs (user
activity ~ rank**-0.8, item popularity ~ rank**-0.9, ids shuffled):

1. ~60k interactions: the vectorised kernel vs the plain-Python Flink-style reference
   (`similarity.reference`), both tables, same caps; scores must be identical.
2. The practical bound: an in-run scatter-add (np.bincount with weights) rate, against
   the kernel's contributions/s.
3. ~1M interactions, default caps: `python -m similarity.main` on 1 rank and under
   torchrun on 2 ranks (gloo): wall time, the job's own seconds, peak RSS per rank,
   speedup, and whether the two outputs are byte-identical.
4. Redis export pairs/s of the 1M tables to a local `redis-server` on a free port.

Timings are wall clock on whatever else the machine is doing; the load average is
printed with them.  Never run as a test.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from similarity import swing  # noqa: E402
from similarity.reference import reference_caps, reference_swing, transpose  # noqa: E402

CAPS = {"min_user_items": 2, "max_user_items": 1000, "max_users_per_item": 1000, "seed": 0}
ALPHA1, ALPHA2, BETA = 15.0, 0.0, 0.3


def power_law_graph(
    n_edges: int, n_users: int, n_items: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (user, item) draws with power-law activity and popularity."""
    rng = np.random.default_rng(seed)
    pu = (np.arange(n_users) + 1.0) ** -0.8
    pi = (np.arange(n_items) + 1.0) ** -0.9
    u = rng.choice(n_users, n_edges, p=pu / pu.sum())
    i = rng.choice(n_items, n_edges, p=pi / pi.sum())
    return rng.permutation(n_users)[u], rng.permutation(n_items)[i]


def load() -> str:
    return "load avg " + " ".join(f"{x:.1f}" for x in os.getloadavg())


class Clock:
    """Wall and CPU seconds of a block (CPU time is what contention distorts least)."""

    def __enter__(self) -> Clock:
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.w0
        self.cpu = time.process_time() - self.c0


def kernel_all_pairs(
    user: np.ndarray, item: np.ndarray, n_users: int, n_items: int, backend: str
) -> tuple[dict[str, tuple[np.ndarray, ...]], int]:
    """Both tables' full scores (before top-K) with the production kernel."""
    u, i = swing.capped_edges(user, item, n_users, n_items, **CAPS)
    ui_ptr, ui_idx = swing.to_csr(u, i, n_users, n_items)
    iu_ptr, iu_idx = swing.to_csr(i, u, n_items, n_users)
    raw: dict[str, tuple[np.ndarray, ...]] = {}
    w_total = 0
    for kind, (a_ptr, a_idx, m_ptr, m_idx, n_t) in {
        "item_item": (iu_ptr, iu_idx, ui_ptr, ui_idx, n_items),
        "user_user": (ui_ptr, ui_idx, iu_ptr, iu_idx, n_users),
    }.items():
        weight = swing.member_weights(np.diff(m_ptr), ALPHA1, BETA)
        cols = []
        for lo, hi in swing.block_plan(a_ptr, m_ptr, a_idx, 0, n_t, swing.BLOCK_BYTES_CAP):
            a, n, s, w = swing.swing_scores(
                a_ptr, a_idx, m_ptr, m_idx, weight, ALPHA2, n_t, lo, hi, backend=backend
            )
            cols.append((a, n, s))
            w_total += w
        raw[kind] = tuple(np.concatenate([c[k] for c in cols]) for k in range(3))
    return raw, w_total


def bench_reference(n_edges: int) -> float:
    n_users, n_items = n_edges // 10, n_edges * 3 // 100
    user, item = power_law_graph(n_edges, n_users, n_items, seed=0)
    print(f"\n[1] ~{n_edges // 1000}k interactions ({n_users} users, {n_items} items)  {load()}")
    backend = swing.kernel_backend()
    with Clock() as first:  # numba compiles here, or loads its on-disk cache
        kernel_all_pairs(user, item, n_users, n_items, backend)
    # The VM's speed drifts by up to ~1.5x over tens of seconds, so the kernel runs
    # three times before and three times after the ~20 s reference and the ratio uses
    # the median of the six: both sides then see the same conditions.
    runs = []

    def time_kernel() -> tuple[dict[str, tuple[np.ndarray, ...]], int]:
        with Clock() as c:
            out = kernel_all_pairs(user, item, n_users, n_items, backend)
        runs.append(c)
        return out

    for _ in range(3):
        raw, w = time_kernel()
    with Clock() as ref_clock:
        graph = reference_caps(zip(user.tolist(), item.tolist()), **CAPS)
        ref = {
            "item_item": reference_swing(graph, ALPHA1, ALPHA2, BETA),
            "user_user": reference_swing(transpose(graph), ALPHA1, ALPHA2, BETA),
        }
    for _ in range(3):
        raw, w = time_kernel()
    by_wall = sorted(runs, key=lambda c: c.wall)
    kernel = Clock()
    kernel.wall = float(np.median([c.wall for c in runs]))
    kernel.cpu = float(np.median([c.cpu for c in runs]))
    same, worst = True, 0.0
    for kind, (a, n, s) in raw.items():
        got = dict(zip(zip(a.tolist(), n.tolist()), s.tolist()))
        assert got.keys() == ref[kind].keys(), kind
        for k, v in ref[kind].items():
            same &= got[k] == v
            worst = max(worst, abs(got[k] - v) / abs(v))
    pairs = sum(len(v) for v in ref.values())
    print(f"    scored pairs {pairs:,}, contributions W {w:,}, kernel backend {backend}")
    print(f"    reference (plain Python): wall {ref_clock.wall:7.2f} s, cpu {ref_clock.cpu:7.2f} s")
    print(
        f"    kernel (median of 6):     wall {kernel.wall:7.3f} s, cpu {kernel.cpu:7.3f} s"
        f"   (range {by_wall[0].wall:.3f}-{by_wall[-1].wall:.3f} s; first call "
        f"{first.wall:.2f} s incl. compile/cache load)"
    )
    print(
        f"    -> {ref_clock.wall / kernel.wall:.0f}x faster (wall), "
        f"{ref_clock.cpu / kernel.cpu:.0f}x (cpu)"
    )
    print(f"    scores identical: {same} (max relative difference {worst:.1e})")
    print(f"    kernel contributions/s {w / kernel.cpu:.3g} (per cpu second)")
    return w / kernel.cpu


def bench_scatter_add(kernel_rate: float, n_terms: int = 20_000_000) -> None:
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 1 << 21, n_terms)
    val = rng.random(n_terms)
    with Clock() as c:
        np.bincount(idx, weights=val, minlength=1 << 21)
    rate = n_terms / c.cpu
    print(f"\n[2] scatter-add bound (np.bincount, {n_terms:,} random terms)  {load()}")
    print(f"    scatter-add terms/s {rate:.3g}; kernel contributions/s {kernel_rate:.3g} (cpu)")
    print(f"    kernel / scatter-add = {kernel_rate / rate:.2f}")


def run_job(world: int, run_dir: Path, data: Path) -> tuple[float, dict]:
    t0 = time.perf_counter()
    start_job(world, run_dir, data).wait()
    wall = time.perf_counter() - t0
    return wall, json.loads((run_dir / "similarity" / "_meta.json").read_text())


def start_job(world: int, run_dir: Path, data: Path) -> subprocess.Popen:
    args = [f"run_dir={run_dir}", f"input={data}", "overwrite=true"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if world == 1:
        cmd = [sys.executable, "-m", "similarity.main", *args]
    else:
        torchrun = [sys.executable, "-m", "torch.distributed.run"]
        cmd = [
            *torchrun,
            "--standalone",
            f"--nproc_per_node={world}",
            "-m",
            "similarity.main",
            *args,
        ]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL)


def same_files(a: Path, b: Path) -> bool:
    names = sorted(p.relative_to(a) for p in a.rglob("part-*.parquet"))
    if names != sorted(p.relative_to(b) for p in b.rglob("part-*.parquet")):
        return False
    return all((a / n).read_bytes() == (b / n).read_bytes() for n in names)


def bench_large(n_edges: int, tmp: Path, repeats: int) -> Path:
    n_users, n_items = n_edges // 10, n_edges * 3 // 100
    user, item = power_law_graph(n_edges, n_users, n_items, seed=0)
    data = tmp / "large.parquet"
    pq.write_table(pa.table({"user": user, "item": item}), data)
    print(
        f"\n[3] ~{n_edges / 1e6:g}M interactions ({n_users} users, {n_items} items), default caps"
    )
    # The VM's speed drifts over tens of seconds, so the 1-rank and 2-rank jobs run as
    # `repeats` back-to-back pairs in alternating order (1,2 then 2,1, ...) and the
    # speedup is the median of the pairs' ratios.
    pairs = []
    for rep in range(repeats):
        rows = {}
        for world in (1, 2) if rep % 2 == 0 else (2, 1):
            print(f"    pair {rep + 1}: running {world} rank(s)  {load()}", flush=True)
            rows[world] = run_job(world, tmp / f"p{rep}-r{world}", data)
        pairs.append(rows)
    for world, (wall, meta) in sorted(pairs[0].items()):
        w = meta["W"]
        rss = ", ".join(f"{x:.0f}" for x in meta["rank_peak_rss_mb"])
        cpu = ", ".join(f"{x:.1f}" for x in meta["rank_cpu_seconds"])
        print(
            f"    {world} rank(s): wall {wall:6.1f} s (job {meta['seconds']:5.1f} s; cpu per rank "
            f"{cpu} s), peak RSS per rank {rss} MB, W {w:,}"
        )
    m = pairs[0][1][1]
    print(
        f"    pairs item_item {m['item_item']['pairs']:,}, user_user {m['user_user']['pairs']:,}; "
        f"coverage {m['item_item']['coverage']:.3f} / {m['user_user']['coverage']:.3f}"
    )
    job, tables = [], []
    for rep, rows in enumerate(pairs):
        (_, m1), (_, m2) = rows[1], rows[2]
        # the tables' compute: rank 0 from the first part to the gather that waits
        # for the slowest rank
        t1, t2 = m1["phase_seconds"]["tables"], m2["phase_seconds"]["tables"]
        job.append(m1["seconds"] / m2["seconds"])
        tables.append(t1 / t2)
        print(
            f"    pair {rep + 1}: job {m1['seconds']:5.2f} s -> {m2['seconds']:5.2f} s = "
            f"{job[-1]:.2f}x; tables {t1:5.2f} s -> {t2:5.2f} s = {tables[-1]:.2f}x; "
            f"wall incl. launcher and imports {rows[1][0] / rows[2][0]:.2f}x"
        )
    print(
        f"    2 ranks vs 1 (median of {repeats} pairs): {np.median(job):.2f}x job seconds "
        f"(range {min(job):.2f}-{max(job):.2f}), {np.median(tables):.2f}x table compute"
    )
    # The machine's own bound: two independent 1-rank jobs at once, each doing ALL the
    # work, with nothing shared but the hardware.  2 x (1-rank job alone) / (their job
    # seconds together) is the most any 2-rank run of this kernel could reach here (on
    # this VM even a BLAS loop runs ~1.2x slower per process when both vCPUs are busy).
    procs = [start_job(1, tmp / f"indep-{k}", data) for k in range(2)]
    for proc in procs:
        proc.wait()
    together = [
        json.loads((tmp / f"indep-{k}" / "similarity" / "_meta.json").read_text())["seconds"]
        for k in range(2)
    ]
    alone = float(np.median([rows[1][1]["seconds"] for rows in pairs]))
    bound = 2 * alone / max(together)
    print(
        f"    two independent 1-rank jobs at once: {together[0]:.2f} s and {together[1]:.2f} s "
        f"(alone {alone:.2f} s) -> 2-process bound {bound:.2f}x; "
        f"2 ranks reach {np.median(job) / bound:.0%} of it"
    )
    same = all(
        same_files(tmp / f"p{rep}-r1", tmp / f"p{rep}-r2")
        and same_files(tmp / "p0-r1", tmp / f"p{rep}-r1")
        for rep in range(repeats)
    )
    print(f"    outputs byte-identical (every job): {same}   {load()}")
    return tmp / "p0-r1" / "similarity"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_redis(stage: Path, tmp: Path) -> None:
    server = shutil.which("redis-server")
    print(f"\n[4] Redis export to a local redis-server  {load()}")
    if server is None:
        print("    skipped: redis-server not installed (apt-get install -y redis-server)")
        return
    from similarity.redis_export import export
    from similarity.redis_store import connect

    port = free_port()
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(100):
            try:
                client = connect(f"redis://127.0.0.1:{port}/0", timeout_s=0.2)
                break
            except Exception:
                time.sleep(0.1)
        report = export(client, "bench", stage, grace_s=60)
        print(
            f"    {report['pairs']:,} pairs in {report['seconds']:.1f} s: "
            f"{report['pairs_per_s']:,.0f} pairs/s (server used {client.info('memory')['used_memory_human']})"
        )
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--edges-small", type=int, default=60_000)
    p.add_argument("--edges-large", type=int, default=1_000_000)
    p.add_argument(
        "--pairs", type=int, default=3, help="1-rank/2-rank job pairs on the large graph"
    )
    p.add_argument("--skip-redis", action="store_true")
    args = p.parse_args()
    print(f"swing_bench: {os.cpu_count()} CPUs, numpy {np.__version__}  {load()}")
    rate = bench_reference(args.edges_small)
    bench_scatter_add(rate)
    with tempfile.TemporaryDirectory(prefix="swing_bench_") as d:
        stage = bench_large(args.edges_large, Path(d), args.pairs)
        if not args.skip_redis:
            bench_redis(stage, Path(d))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\n(benchmark process peak RSS {peak:.0f} MB)")


if __name__ == "__main__":
    main()
