"""python benchmarks/scale_bench.py --interactions 1000000 [--baseline-tree DIR] [--train-steps 500]

The whole data path at a given size, each stage a separate process tree, as a user
runs it:

    generate   seeded synthetic raw reviews (benchmarks/ingest_bench.py `write_synthetic`
               with power-law users and items: p ~ rank**-0.8 and rank**-0.9), written
               in 1M-row chunks by a fresh process whose own peak RSS is printed too
    features   python -m features.main --config C               (`dlrrec features build`)
    swing      torchrun --standalone --nproc_per_node 2 -m similarity.main --config C
    train      torchrun --standalone --nproc_per_node 2 -m trainer.main --config C
               (1 epoch of at most --train-steps global batches of --batch-size; the
               defaults otherwise: towers, InfoNCE on the SWING pairs, val + test)

Per stage it prints the wall time, rows/s (interactions for features and SWING; the
trainer's own train_examples_per_s from report.json for training), the peak RSS of
every process of the tree (the launcher and each rank separately: VmHWM read from
/proc every 0.1 s, with the tree's largest process cross-checked against wait4's
ru_maxrss, which is exact) and the simultaneous peak of the whole tree; and the
examples' bytes per row on disk.  A stage whose tree exceeds --rss-limit-gib is
killed and reported as such (the machine is shared).

`--baseline-tree DIR` runs the same stages from another checkout (e.g. `git archive`
of an older commit) on the same raw data and config, and prints ours / baseline
ratios side by side.  MiniLM item vectors go through one shared embedding cache
(entities: fixed cost, not the subject here), so every features run after the first
finds them cached; each tree also compiles its SWING kernel untimed beforehand (see
`warm_up`).  Wall clock on whatever else the machine is doing; the load
average is printed.  `--json FILE` keeps the figures; `--markdown F.json ...` prints
several runs as one table (docs/scale.md).  `--label` names this checkout's runs.
Figures and the model to 10^9: docs/scale.md.  Never run as a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GIB = 2**30
STAGES = ("features", "swing", "train")


# ---------------------------------------------------------------- process trees


def descendants(root: int) -> list[int]:
    """`root` and every process below it (/proc/PID/task/TID/children)."""
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        out.append(pid)
        for task in Path(f"/proc/{pid}/task").glob("*/children"):
            try:
                stack.extend(int(c) for c in task.read_text().split())
            except OSError:  # exited meanwhile
                pass
    return out


def proc_kib(pid: int) -> dict[str, int]:
    """VmHWM (peak RSS) and VmRSS of one process, KiB; {} once it is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return {
        k: int(v.split()[0])
        for k, v in (line.split(":", 1) for line in lines)
        if k in ("VmHWM", "VmRSS")
    }


def proc_role(pid: int) -> str:
    """`rank N` for a torchrun worker (and anything it starts), else `launcher`/`main`."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return "?"
    for kv in env:
        if kv.startswith(b"RANK="):
            return f"rank {kv[5:].decode()}"
    return "process"


@dataclass
class TreeUsage:
    """What one stage's process tree used: per role (launcher, rank N) peaks in GiB."""

    wall_s: float = 0.0
    exit_code: int = 0
    killed: str = ""
    peak_by_role: dict[str, float] = field(default_factory=dict)
    tree_peak_gib: float = 0.0  # sum of the tree's RSS at one instant, maximum over time
    largest_gib: float = 0.0  # wait4 ru_maxrss: the tree's largest process, exact


class TreeMonitor(threading.Thread):
    """Polls a process tree's memory until stopped; kills it over `limit_gib`."""

    def __init__(self, root: int, limit_gib: float) -> None:
        super().__init__(daemon=True)
        self.root, self.limit_kib = root, limit_gib * 2**20
        self.hwm: dict[int, int] = {}
        self.role: dict[int, str] = {}
        self.tree_peak = 0
        self.killed = ""
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.1):
            total = 0
            for pid in descendants(self.root):
                kib = proc_kib(pid)
                if not kib:
                    continue
                if pid == self.root:
                    self.role[pid] = "launcher"
                elif not self.role.get(pid, "").startswith("rank"):
                    # read again until it is a rank: a fresh fork has its parent's environ
                    self.role[pid] = proc_role(pid)
                self.hwm[pid] = max(self.hwm.get(pid, 0), kib["VmHWM"])
                total += kib["VmRSS"]
            self.tree_peak = max(self.tree_peak, total)
            if total > self.limit_kib and not self.killed:
                self.killed = f"killed at {total / 2**20:.1f} GiB (over --rss-limit-gib)"
                os.killpg(self.root, signal.SIGKILL)

    def by_role(self, single: bool) -> dict[str, float]:
        """Peak GiB per role; a rank's helper processes are added to the rank (upper bound)."""
        out: dict[str, float] = {}
        for pid, kib in self.hwm.items():
            role = "main" if single and self.role[pid] == "launcher" else self.role[pid]
            out[role] = out.get(role, 0.0) + kib / 2**20
        return dict(sorted(out.items()))


def run_tree(cmd: list[str], cwd: Path, log: Path, limit_gib: float) -> TreeUsage:
    """Run `cmd` as its own session, watching its tree; output goes to `log`."""
    env = {**os.environ, "PYTHONPATH": str(cwd), "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        mon = TreeMonitor(proc.pid, limit_gib)
        mon.start()
        _, status, rusage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    mon.done.set()
    mon.join()
    return TreeUsage(
        wall_s=wall,
        exit_code=proc.returncode,
        killed=mon.killed,
        peak_by_role=mon.by_role(single=cmd[0] != "torchrun"),
        tree_peak_gib=mon.tree_peak / 2**20,
        largest_gib=rusage.ru_maxrss / 2**20,  # KiB on Linux
    )


@dataclass
class Bench:
    """What every tree runs: the size, the stages and the training budget."""

    interactions: int
    stages: list[str]
    batch_size: int
    train_steps: int
    rss_limit_gib: float
    keep: bool


# ---------------------------------------------------------------- data and config


def generate(raw: Path, n: int, users: int, items: int, seed: int) -> dict:
    """The raw reviews, once per shape (a complete folder is reused), in a fresh process."""
    done = raw / "shape.json"
    if done.exists():
        return json.loads(done.read_text())
    tmp = raw.with_name(raw.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    code = (
        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]);"
        "from benchmarks.ingest_bench import write_synthetic;"
        "write_synthetic(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[6]),"
        " n_users=int(sys.argv[4]), n_items=int(sys.argv[5]), power_law=True)"
    )
    cmd = [sys.executable, "-c", code, str(REPO), str(tmp), str(n), str(users), str(items)]
    usage = run_tree([*cmd, str(seed)], REPO, raw.parent / f"{raw.name}.log", 1e9)
    if usage.exit_code:
        raise SystemExit(f"generate: exit {usage.exit_code}, see {raw.parent / raw.name}.log")
    shape = {
        "interactions": n, "users": users, "items": items, "seed": seed,
        "seconds": round(usage.wall_s, 1), "peak_gib": round(usage.largest_gib, 2),
        "bytes": sum(f.stat().st_size for f in tmp.glob("*.parquet")),
    }  # fmt: skip
    (tmp / "shape.json").write_text(json.dumps(shape))
    tmp.rename(raw)
    return shape


def write_config(path: Path, run_dir: Path, raw: Path, cache: Path, bench: Bench) -> None:
    """One YAML for all three stages; only keys that today's and older trees both know."""
    cfg = {
        "run_dir": str(run_dir),
        "seed": 0,
        "dataset": f"synthetic-{bench.interactions}",
        "features": {"raw_dir": str(raw), "embed_cache_dir": str(cache)},
        "similarity": {"top_k": 50},
        "train": {
            "epochs": 1,
            "batch_size": bench.batch_size,
            "max_steps_per_epoch": bench.train_steps,
            "tensorboard": False,
            "progress_bar": False,
            "keep_checkpoints": 1,
        },
    }
    path.write_text(json.dumps(cfg, indent=1))  # JSON is YAML


def warm_up(tree: Path, label: str, work: Path, items: int, seed: int) -> None:
    """Untimed features + SWING from `tree` on 20k rows, so no timed run pays one-off costs:
    MiniLM over the item texts (cached; the items table depends only on (items, seed),
    so a small run's items are every size's) and numba compiling the SWING kernel (cached
    in the tree's __pycache__).
    """
    raw = work / f"raw-warm-{items}-s{seed}"
    generate(raw, 20_000, 2_000, items, seed)
    run_dir = work / f"run-warm-{label}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    cfg = run_dir / "config.yaml"
    cfg.write_text(json.dumps({"run_dir": str(run_dir), "features": {
        "raw_dir": str(raw), "embed_cache_dir": str(work / "embed_cache")}}))  # fmt: skip
    for stage in ("features", "swing"):
        usage = run_tree(stage_cmd(stage, cfg), tree, run_dir / f"{stage}.log", 1e9)
        if usage.exit_code:
            raise SystemExit(f"warm-up {stage} failed: see {run_dir / stage}.log")


# ---------------------------------------------------------------- stages


def dir_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def stage_cmd(stage: str, cfg: Path) -> list[str]:
    module = {"features": "features.main", "swing": "similarity.main", "train": "trainer.main"}
    if stage == "features":
        return [sys.executable, "-m", module[stage], "--config", str(cfg)]
    return ["torchrun", "--standalone", "--nproc_per_node", "2", "-m", module[stage],
            "--config", str(cfg)]  # fmt: skip


def stage_figures(stage: str, run_dir: Path, n: int, usage: TreeUsage) -> dict:
    """rows/s and the stage's own numbers, read from what it wrote."""
    out: dict = {"rows": n, "rows_per_s": n / usage.wall_s}
    if usage.exit_code or usage.killed:
        return out
    if stage == "features":
        meta = json.loads((run_dir / "features" / "_meta.json").read_text())
        rows = sum(meta["rows"].values())
        ex = dir_bytes(run_dir / "features" / "examples")
        parts = len(list((run_dir / "features" / "examples").rglob("*.parquet")))
        out.update(rows=rows, rows_per_s=rows / usage.wall_s, examples_bytes=ex,
                   bytes_per_row=ex / rows, examples_parts=parts,
                   entities_bytes=dir_bytes(run_dir / "features" / "entities"))  # fmt: skip
    elif stage == "swing":
        meta = json.loads((run_dir / "similarity" / "_meta.json").read_text())
        out["job_seconds"] = meta.get("seconds")
    else:
        report = json.loads((run_dir / "train" / "report.json").read_text())
        steps = [json.loads(line) for line in (run_dir / "train" / "metrics.jsonl").open()]
        epoch = [m for m in steps if m.get("kind") == "epoch"]
        out.update(
            train_examples_per_s=report["throughput"]["train_examples_per_s"],
            train_steps=epoch[-1]["step"] if epoch else None,
            val_auc=report["val"]["auc"],
            test_auc=report["test"]["auc"],
        )
    return out


def run_tree_stages(tree: Path, label: str, work: Path, raw: Path, bench: Bench) -> dict:
    """features -> swing -> train from checkout `tree`; a failed stage stops the rest."""
    run_dir = work / f"run-{label}-{bench.interactions}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    cfg = run_dir / "config.yaml"
    write_config(cfg, run_dir, raw, work / "embed_cache", bench)
    results: dict = {}
    for stage in bench.stages:
        avail = mem_available_gib()
        print(f"[{label}] {stage}: starting ({avail:.1f} GiB available, {load()})", flush=True)
        usage = run_tree(stage_cmd(stage, cfg), tree, run_dir / f"{stage}.log", bench.rss_limit_gib)
        results[stage] = {"usage": asdict(usage),
                          **stage_figures(stage, run_dir, bench.interactions, usage)}  # fmt: skip
        print(f"[{label}] {stage}: " + summary(results[stage]), flush=True)
        if usage.exit_code or usage.killed:
            print(f"[{label}] {stage} failed: see {run_dir / (stage + '.log')}", flush=True)
            break
    if not bench.keep:
        shutil.rmtree(run_dir / "train" / "checkpoints", ignore_errors=True)
    return results


# ---------------------------------------------------------------- printing


def tree_version(tree: Path) -> str:
    """The checkout's commit (+ "-dirty"), or "not a git checkout" (e.g. a `git archive`)."""
    git = ["git", "-C", str(tree)]
    top = subprocess.run([*git, "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    if top.returncode or Path(top.stdout.strip()).resolve() != tree.resolve():
        return "not a git checkout"
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()  # fmt: skip
    return head.stdout.strip() + ("-dirty" if dirty else "")


def mem_available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def load() -> str:
    return "load avg " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def summary(r: dict) -> str:
    u = r["usage"]
    peaks = ", ".join(f"{k} {v:.2f}" for k, v in u["peak_by_role"].items())
    s = f"{u['wall_s']:.1f} s, peak RSS GiB: {peaks}; tree {u['tree_peak_gib']:.2f}"
    s += f", largest (wait4) {u['largest_gib']:.2f}"
    if u["exit_code"] or u["killed"]:
        return s + f"; FAILED exit {u['exit_code']} {u['killed']}"
    return s


def max_rank_gib(r: dict) -> float:
    """The largest per-process peak other than the torchrun launcher."""
    peaks = r["usage"]["peak_by_role"]
    return max((v for k, v in peaks.items() if k != "launcher"), default=float("nan"))


def rate(r: dict) -> float:
    return r.get("train_examples_per_s", r["rows_per_s"])


def print_table(label: str, res: dict) -> None:
    print(f"\n{label}")
    print(f"{'stage':9} {'wall s':>8} {'rows/s':>10} {'peak/proc GiB':>14} {'tree GiB':>9}  "
          "per process (GiB) / notes")  # fmt: skip
    for stage, r in res.items():
        u = r["usage"]
        note = ", ".join(f"{k} {v:.2f}" for k, v in u["peak_by_role"].items())
        if "bytes_per_row" in r:
            note += f"; examples {r['bytes_per_row']:.0f} B/row in {r['examples_parts']} parts"
        if "train_examples_per_s" in r:
            note += f"; {r['train_steps']} steps, val AUC {r['val_auc']:.4f}, rows/s = train ex/s"
        if u["exit_code"] or u["killed"]:
            note += f"; FAILED (exit {u['exit_code']}) {u['killed']}"
        print(f"{stage:9} {u['wall_s']:8.1f} {rate(r):10,.0f} {max_rank_gib(r):14.2f} "
              f"{u['tree_peak_gib']:9.2f}  {note}")  # fmt: skip


def features_build(tree: Path, work: Path, label: str, rows: int, features: dict, measure: Callable[[Path], dict]) -> dict:
    """One `features.main` run from checkout `tree` with the `features` config section (a
    fresh run dir and embedding cache): its wall time and peak RSS, plus what `measure`
    reads from the run dir before both are deleted."""
    run_dir, cache = work / f"run-{label}-{rows}", work / f"cache-{label}-{rows}"
    for d in (run_dir, cache):
        shutil.rmtree(d, ignore_errors=True)
    cfg = work / f"{label}-{rows}.json"
    cfg.write_text(json.dumps({"run_dir": str(run_dir), "seed": 0, "dataset": f"synthetic-{rows}",
                               "features": {**features, "embed_cache_dir": str(cache)}}))  # fmt: skip
    usage = run_tree([sys.executable, "-m", "features.main", "--config", str(cfg)], tree,
                     work / f"{label}-{rows}.log", 1e9)  # fmt: skip
    if usage.exit_code:
        raise SystemExit(f"{label} at {rows}: exit {usage.exit_code}, see {work}/{label}-{rows}.log")
    out = {"wall_s": round(usage.wall_s, 1), "peak_gib": round(usage.largest_gib, 3), **measure(run_dir)}
    shutil.rmtree(run_dir)
    shutil.rmtree(cache)
    return out


def print_peak_table(res: dict[str, dict[int, dict]], rows: list[int], columns: str, cell: str) -> None:
    """Rows x checkouts: each run's figures (`cell` formats a run's dict; `columns` names
    them), the peak ratio ours/baseline, and how each checkout's peak grows with the rows."""
    trees = list(res)
    print(f"\n{'rows':>9} | " + " | ".join(f"{t}: {columns}" for t in trees)
          + (" | peak ours/baseline" if len(trees) > 1 else ""))  # fmt: skip
    for n in rows:
        cells = [cell.format(**res[t][n]) for t in trees]
        ratio = (f" | {res['ours'][n]['peak_gib'] / res['baseline'][n]['peak_gib']:.2f}x"
                 if len(trees) > 1 else "")  # fmt: skip
        print(f"{n:>9} | " + " | ".join(cells) + ratio)
    for t in trees:
        lo, hi = (res[t][n]["peak_gib"] for n in (rows[0], rows[-1]))
        print(f"{t}: peak grows {hi / lo:.2f}x for {rows[-1] / rows[0]:.0f}x the rows")


def print_ratios(ours: dict, base: dict) -> None:
    print("\nratios ours / baseline (time and memory: < 1 is better; rows/s: > 1 is better)")
    print(f"{'stage':9} {'wall':>7} {'rows/s':>7} {'peak/proc':>10} {'tree':>7} {'B/row':>7}")
    for stage in ours:
        if stage not in base:
            continue
        o, b = ours[stage], base[stage]
        bpr = (f"{o['bytes_per_row'] / b['bytes_per_row']:7.2f}"
               if "bytes_per_row" in o and "bytes_per_row" in b else f"{'':>7}")  # fmt: skip
        print(f"{stage:9} {o['usage']['wall_s'] / b['usage']['wall_s']:7.2f} "
              f"{rate(o) / rate(b):7.2f} {max_rank_gib(o) / max_rank_gib(b):10.2f} "
              f"{o['usage']['tree_peak_gib'] / b['usage']['tree_peak_gib']:7.2f} {bpr}")  # fmt: skip


def markdown_rows(files: list[Path]) -> None:
    """One markdown table row per (file, tree): what docs/scale.md shows."""
    print("| interactions | tree | features s / GiB | examples B/row | SWING s / GiB per rank "
          "| train s / GiB per rank | train ex/s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for f in files:
        saved = json.loads(f.read_text())
        for label, res in saved["results"].items():
            cells = [f"{saved['shape']['interactions'] / 1e6:g}M",
                     f"{label} {saved.get('versions', {}).get(label, '')}"]  # fmt: skip
            for stage in STAGES:
                r = res.get(stage)
                if r is None:
                    cells.append("not run")
                elif r["usage"]["exit_code"] or r["usage"]["killed"]:
                    cells.append(
                        f"failed: {r['usage']['killed'] or 'exit ' + str(r['usage']['exit_code'])}"
                    )
                else:
                    cells.append(f"{r['usage']['wall_s']:.0f} / {max_rank_gib(r):.2f}")
                if stage == "features":
                    cells.append(f"{r['bytes_per_row']:.0f}" if r and "bytes_per_row" in r else "")
            train = res.get("train", {})
            cells.append(
                f"{train['train_examples_per_s']:,.0f}" if "train_examples_per_s" in train else ""
            )
            print("| " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--interactions", type=int, default=1_000_000)
    p.add_argument("--users", type=int, default=0, help="0 = interactions / 10")
    p.add_argument("--items", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--train-steps", type=int, default=500, help="0 = a whole epoch")
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument("--baseline-tree", type=Path, help="another checkout to compare against")
    p.add_argument("--label", default="ours", help="this tree's name in the output and run dir")
    p.add_argument("--only-baseline", action="store_true", help="run the baseline tree only")
    p.add_argument("--baseline-json", type=Path, help="reuse the baseline of an earlier --json")
    p.add_argument("--work", type=Path, default=Path("/tmp/scale_bench"))
    p.add_argument("--rss-limit-gib", type=float, default=13.5)
    p.add_argument("--json", type=Path, help="write the figures here")
    p.add_argument("--keep", action="store_true", help="keep the checkpoints")
    p.add_argument("--markdown", type=Path, nargs="+", help="print earlier --json files as a table")
    args = p.parse_args(argv)
    if args.markdown:
        markdown_rows(args.markdown)
        return 0
    args.stages = [s for s in args.stages.split(",") if s]
    if bad := [s for s in args.stages if s not in STAGES]:
        p.error(f"--stages: unknown {bad}; choose from {','.join(STAGES)}")
    users = args.users or max(args.interactions // 10, 10)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    raw = work / f"raw-{args.interactions}-{users}-{args.items}-s{args.seed}"
    shape = generate(raw, args.interactions, users, args.items, args.seed)
    print(f"raw reviews: {shape['interactions']:,} interactions, {users:,} users, "
          f"{args.items:,} items; {shape['bytes'] / 2**20:.0f} MiB; generated in "
          f"{shape['seconds']} s at peak RSS {shape['peak_gib']} GiB ({raw})")  # fmt: skip
    print(f"batch {args.batch_size}, train steps {args.train_steps or 'one epoch'}, "
          f"{load()}, {mem_available_gib():.1f} GiB available")  # fmt: skip
    trees = [] if args.only_baseline else [(REPO, args.label)]
    if args.baseline_tree:
        trees.insert(0, (args.baseline_tree.resolve(), "baseline"))
    bench = Bench(args.interactions, args.stages, args.batch_size, args.train_steps,
                  args.rss_limit_gib, args.keep)  # fmt: skip
    results = {}
    for tree, label in trees:
        warm_up(tree, label, work, args.items, args.seed)
        results[label] = run_tree_stages(tree, label, work, raw, bench)
    if args.baseline_json:  # figures of an earlier baseline run of the same size and shape
        saved = json.loads(args.baseline_json.read_text())
        if saved["shape"]["interactions"] != args.interactions or saved["shape"]["users"] != users:
            p.error(f"--baseline-json: {args.baseline_json} holds another size or shape")
        results["baseline"] = saved["results"]["baseline"]
        trees.insert(0, (Path(saved["args"]["baseline_tree"]), "baseline"))
    for tree, label in trees:
        version = tree_version(tree)
        print_table(f"{label} ({tree}, {version}): {args.interactions:,} interactions",
                    results[label])  # fmt: skip
    if args.label in results and "baseline" in results:
        print_ratios(results[args.label], results["baseline"])
    if args.json:
        versions = {label: tree_version(tree) for tree, label in trees}
        args.json.write_text(json.dumps({"shape": shape, "args": {k: str(v) for k, v in vars(args).items()},
                                         "versions": versions, "load": os.getloadavg(),
                                         "results": results}, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
