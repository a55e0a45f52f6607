"""dlrrec similarity swing --config configs/movielens-100k.yaml [key=value ...]

SWING item-item and user-user positive-pair tables (DESIGN.md "SWING").  The same
command runs as one process or under torchrun / TorchX with N ranks:

    torchrun --standalone --nproc_per_node 2 -m similarity.main --config C

Each table's anchors are cut into parts of about equal estimated work (sum of
|U_i|**2 after the caps, plus the entries the kernel lists; `swing.work_estimate`),
not equal counts.  The parts of both tables form one queue, longest first; a rank
takes the next part from an atomic counter in the process group's store whenever it
finishes one, and writes its part files into one temp folder (on a shared filesystem
when ranks span hosts).  Rank 0 writes `_meta.json` after a barrier and renames the
folder into `run_dir/similarity/`.  Part boundaries depend only on the graph and
`parts`, never on the rank count or on which rank took a part, so 1 rank and N ranks
write byte-identical files.

Crash recovery: the temp folder is named after the job's fingerprint
(`run_dir/.similarity.partial-<fp>`), every part file is renamed into it when
complete, and a small record of its counts goes to `_progress/` after it.  A rerun of
the same config and input (after a kill -9, a lost node, a TorchElastic restart) finds
the folder, keeps every part that has a record and computes only the rest; the tables
are byte-identical to an uninterrupted run.  `_meta.json` says how many parts were
reused (`parts_reused`).

Reads: `run_dir/features/` (train rows with label == 1) or `input=` (a plain
`user`/`item` table, see `similarity.tables`).
Writes: `run_dir/similarity/{item_item,user_user}/part-*.parquet`
(anchor int64, neighbor int64, score float32, rank int16; sorted by anchor, rank) and
`run_dir/similarity/_meta.json`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record

from dlrrec.artifacts import (
    SCHEMA_VERSION,
    existing_output,
    fingerprinted_config,
    publish_dir,
    read_meta,
    sha256_json,
    write_json_atomic,
)
from dlrrec.code_version import code_version
from dlrrec.config import ConfigError, DlrrecError, to_dict
from dlrrec.entry import run_job
from dlrrec.process_group import is_rank0, join_group, leave_group, rank0_print
from similarity import swing
from similarity.config import SwingConfig
from similarity.tables import KINDS, Positives, read_positives, write_ids, write_pairs

# Auto `parts`: about this much estimated work (`swing.work_estimate`) per part file:
# enough parts to balance ranks on big graphs, one file for a toy one.
WORK_PER_PART = float(1 << 22)
MAX_AUTO_PARTS = 1024


def fingerprint(cfg: SwingConfig, input_fingerprint: str) -> str:
    """Hash of everything the tables depend on: the config's math keys and the input."""
    params = fingerprinted_config(cfg, "similarity")
    code = code_version("similarity")  # the SWING job's sources (dlrrec/code_version.py)
    return sha256_json({"config": params, "input": input_fingerprint, "schema": SCHEMA_VERSION, "code": code})


class _Comm:
    """The ranks of this job: a process group when WORLD_SIZE > 1, else a single process.

    SWING is CPU work, so its own group is always gloo, whatever GPUs the node has
    (nccl would need one GPU per rank). Inside a caller's nccl group, objects go
    through a gloo subgroup: the kernel and the data it exchanges live on the CPU.
    """

    def __init__(self) -> None:
        self.owns_group = join_group("gloo", single_rank=False)
        self.group: Any = None
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        if dist.is_initialized() and dist.get_backend() != "gloo":
            self.group = dist.new_group(backend="gloo")

    def broadcast(self, obj: Any) -> Any:
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def work_queue(self, n_jobs: int) -> Iterator[int]:
        """Job indices [0, n_jobs) dealt out on demand: each rank takes the next one when
        it finishes its last, from an atomic counter in the group's key-value store.

        Which rank runs a job never changes what it writes, so the dynamic order keeps
        the outputs identical while absorbing both the work estimate's errors and
        ranks that run slower (a busy host, a noisy neighbour).
        """
        if self.world == 1:
            yield from range(n_jobs)
            return
        key = "dlrrec/swing/next/" + self.broadcast(uuid.uuid4().hex)
        store = dist.distributed_c10d._get_default_store()
        while (j := int(store.add(key, 1)) - 1) < n_jobs:
            yield j

    def close(self) -> None:
        leave_group(self.owns_group)


def log(msg: str) -> None:
    """Progress lines on rank 0 only."""
    rank0_print(f"[swing] {msg}", file=sys.stderr)


PROGRESS = "_progress"
_PHASES: dict[str, float] = {}


def partial_dir(final: Path, fp: str) -> Path:
    """The resumable temp folder of the job with fingerprint `fp`, beside `final`."""
    return final.with_name(f".{final.name}.partial-{fp[:16]}")


@contextlib.contextmanager
def _shared_tmp(comm: _Comm, final: Path, fp: str) -> Iterator[Path]:
    """The job's temp folder, shared by all ranks; renamed to `final` when complete.

    Unlike `atomic_dir`, a failure leaves the folder in place: its finished parts are
    valid for this fingerprint and a rerun reuses them.  Partial folders of other
    fingerprints (an older config or input) are removed when a job starts.
    """
    tmp = partial_dir(final, fp)
    if is_rank0():
        final.parent.mkdir(parents=True, exist_ok=True)
        for stale in final.parent.glob(f".{final.name}.partial-*"):
            if stale != tmp:
                shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir(exist_ok=True)
    comm.gather(None)  # the folder exists before any rank writes into it
    yield tmp
    if is_rank0():
        shutil.rmtree(tmp / PROGRESS, ignore_errors=True)
        for leftover in tmp.rglob(".*.tmp-*"):  # writes cut short by an earlier crash
            leftover.unlink(missing_ok=True)
        publish_dir(tmp, final)


def _done_part(tmp: Path, kind: str, p: int, lo: int, hi: int, fp: str) -> dict[str, Any] | None:
    """The counts of part `p` when an earlier attempt finished it, else None."""
    record_path = tmp / PROGRESS / f"{kind}-{p:05d}.json"
    if not record_path.is_file() or not (tmp / kind / f"part-{p:05d}.parquet").is_file():
        return None
    try:
        rec = json.loads(record_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if rec.get("fingerprint") != fp or rec.get("bounds") != [lo, hi]:
        return None
    return rec


def _write_part_atomic(path: Path, cols: tuple[np.ndarray, ...]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    write_pairs(tmp, *cols)
    os.replace(tmp, path)


def peak_rss_mb() -> float:
    """This process's peak RSS.  /proc's VmHWM, not ru_maxrss: Linux carries ru_maxrss
    across exec, so a job started by a big parent would report the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def auto_parts(total_work: float) -> int:
    """Part files per table when `parts=0`: from the graph alone, never the rank count."""
    return int(min(MAX_AUTO_PARTS, max(1, math.ceil(total_work / WORK_PER_PART))))


def _graph(cfg: SwingConfig, pos: Positives) -> tuple[dict[str, Any], dict[str, int]]:
    """CSR both ways of the capped graph, member weights and cap counts."""
    code = swing.distinct_codes(pos.user, pos.item, pos.n_items)
    u, i = swing.capped_edges(
        pos.user,
        pos.item,
        pos.n_users,
        pos.n_items,
        cfg.min_user_items,
        cfg.max_user_items,
        cfg.max_users_per_item,
        cfg.seed,
        code=code,
    )
    # capped_edges returns the edges sorted by (u, i): that CSR needs no sort
    ui_ptr, ui_idx = swing.csr_of_sorted(u, i, pos.n_users, pos.n_items)
    iu_ptr, iu_idx = swing.to_csr(i, u, pos.n_items, pos.n_users)
    g = {"ui_ptr": ui_ptr, "ui_idx": ui_idx, "iu_ptr": iu_ptr, "iu_idx": iu_idx}
    counts = {
        "positives": len(pos.user),
        "distinct_positives": len(code),
        "edges_after_caps": len(u),
        "users_kept": int((np.diff(ui_ptr) > 0).sum()),
        "items_kept": int((np.diff(iu_ptr) > 0).sum()),
    }
    return g, counts


def _compute_part(
    anchor_ptr: np.ndarray,
    anchor_members: np.ndarray,
    member_ptr: np.ndarray,
    member_targets: np.ndarray,
    weight: np.ndarray,
    n_targets: int,
    lo: int,
    hi: int,
    cfg: SwingConfig,
) -> tuple[tuple[np.ndarray, ...], int]:
    budget = cfg.memory_budget_gb * float(1 << 30)
    # Half the budget for a block's entries, half for a chunk of pairs; both also capped
    # at sizes that stay in the allocator's reused heap (arrays of a few tens of MB):
    # fresh multi-hundred-MB arrays cost more in page faults than the math.
    block_bytes = min(budget / 2, swing.BLOCK_BYTES_CAP)
    max_pairs = max(1, int(min(budget / 2, swing.BLOCK_BYTES_CAP) / swing.BYTES_PER_PAIR))
    out: list[tuple[np.ndarray, ...]] = []
    contributions = 0
    for b_lo, b_hi in swing.block_plan(anchor_ptr, member_ptr, anchor_members, lo, hi, block_bytes):
        a, n, s, w = swing.swing_scores(
            anchor_ptr, anchor_members, member_ptr, member_targets, weight,
            cfg.alpha2, n_targets, b_lo, b_hi, max_pairs, cfg.kernel,
        )  # fmt: skip
        contributions += w
        out.append(swing.top_k_neighbors(a, n, s, cfg.top_k, cfg.kernel))
    if not out:
        empty = (
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
            np.zeros(0, np.float32),
            np.zeros(0, np.int16),
        )
        return empty, 0
    cols = tuple(np.concatenate([o[c] for o in out]) for c in range(4))
    return cols, contributions


def _plan_kind(cfg: SwingConfig, kind: str, g: dict[str, Any], pos: Positives) -> dict[str, Any]:
    """One table's CSR views, member weights, part bounds and per-part work estimates
    (from the graph alone, never the rank count)."""
    if kind == "item_item":
        a_ptr, a_idx, m_ptr, m_idx = g["iu_ptr"], g["iu_idx"], g["ui_ptr"], g["ui_idx"]
        n_anchors, ids = pos.n_items, pos.item_ids
    else:
        a_ptr, a_idx, m_ptr, m_idx = g["ui_ptr"], g["ui_idx"], g["iu_ptr"], g["iu_idx"]
        n_anchors, ids = pos.n_users, pos.user_ids
    work = swing.work_estimate(a_ptr, a_idx, m_ptr)
    parts = cfg.parts or auto_parts(float(work.sum()))
    bounds = swing.split_by_work(work, parts)
    part_work = np.add.reduceat(np.append(work, 0.0), bounds[:-1]) if len(work) else np.zeros(parts)
    part_work[bounds[:-1] == bounds[1:]] = 0.0
    return {
        "csr": (a_ptr, a_idx, m_ptr, m_idx),
        "weight": swing.member_weights(np.diff(m_ptr), cfg.alpha1, cfg.beta),
        "n_anchors": n_anchors,
        "ids": ids,
        "parts": parts,
        "bounds": bounds,
        "part_work": part_work,
        "work": float(work.sum()),
    }


def _write_part(
    cfg: SwingConfig, kind: str, plan: dict[str, Any], p: int, tmp: Path, fp: str
) -> tuple[dict[str, Any], bool]:
    """Part p of one table, computed and written (or reused from an earlier attempt);
    returns its progress record and whether it was reused."""
    lo, hi = int(plan["bounds"][p]), int(plan["bounds"][p + 1])
    rec = _done_part(tmp, kind, p, lo, hi, fp)
    if rec is not None:
        return rec, True
    a_ptr, a_idx, m_ptr, m_idx = plan["csr"]
    (a, n, s, r), w = _compute_part(
        a_ptr, a_idx, m_ptr, m_idx, plan["weight"], plan["n_anchors"], lo, hi, cfg
    )
    ids = plan["ids"]
    if isinstance(ids, np.ndarray):  # integer input ids: write the originals back
        a, n = ids[a], ids[n]
    _write_part_atomic(tmp / kind / f"part-{p:05d}.parquet", (a, n, s, r))
    rec = {
        "fingerprint": fp,
        "bounds": [lo, hi],
        "pairs": len(a),
        "anchors_with_neighbors": int(np.count_nonzero(r == 0)),
        "contributions": int(w),
    }
    write_json_atomic(tmp / PROGRESS / f"{kind}-{p:05d}.json", rec)
    return rec, False


def _write_tables(
    comm: _Comm, cfg: SwingConfig, g: dict[str, Any], pos: Positives, tmp: Path, fp: str
) -> dict[str, dict[str, Any]]:
    """This rank's part files of both tables (reusing the ones an earlier attempt
    finished); returns its counts per table.

    The parts of both tables form one queue, longest (estimated) first, and a rank
    takes the next part whenever it finishes one (`_Comm.work_queue`): nobody waits at
    a barrier between the tables, and the last parts to go are the small ones.
    """
    plans = {kind: _plan_kind(cfg, kind, g, pos) for kind in KINDS}
    jobs = [(kind, p) for kind in KINDS for p in range(plans[kind]["parts"])]
    jobs.sort(key=lambda kp: (-plans[kp[0]]["part_work"][kp[1]], KINDS.index(kp[0]), kp[1]))
    (tmp / PROGRESS).mkdir(parents=True, exist_ok=True)
    counts: dict[str, dict[str, Any]] = {}
    for kind in KINDS:
        (tmp / kind).mkdir(exist_ok=True)
        counts[kind] = {
            "pairs": 0,
            "anchors_with_neighbors": 0,
            "contributions": 0,
            "parts_reused": 0,
            "seconds": 0.0,
            "parts": plans[kind]["parts"],
            "work_estimate": plans[kind]["work"],
        }
    for j in comm.work_queue(len(jobs)):
        kind, p = jobs[j]
        t0 = time.perf_counter()
        rec, reused = _write_part(cfg, kind, plans[kind], p, tmp, fp)
        c = counts[kind]
        c["parts_reused"] += int(reused)
        for key in ("pairs", "anchors_with_neighbors", "contributions"):
            c[key] += rec[key]
        c["seconds"] += time.perf_counter() - t0
    return counts


def run(cfg: SwingConfig) -> dict[str, Any]:
    """Compute both SWING tables into `run_dir/similarity/` and return its `_meta.json`."""
    start = time.perf_counter()
    comm = _Comm()
    _PHASES.clear()
    _PHASES["group_init"] = time.perf_counter() - start
    try:
        return _run(cfg, comm, start)
    finally:
        comm.close()


def _run(cfg: SwingConfig, comm: _Comm, start: float) -> dict[str, Any]:
    final = Path(cfg.run_dir) / "similarity"
    t = time.perf_counter()
    pos = read_positives(cfg.run_dir, cfg.input)
    _PHASES["read_input"] = time.perf_counter() - t
    fp = fingerprint(cfg, pos.fingerprint)
    decision = None
    if is_rank0():
        try:
            decision = "reuse" if existing_output(final, fp, cfg.overwrite) else "write"
        except DlrrecError as e:
            decision = f"error:{e}"
    decision = comm.broadcast(decision)
    if decision.startswith("error:"):
        raise ConfigError(decision[len("error:") :])
    if decision == "reuse":
        log(f"reusing {final} (same config and input)")
        return read_meta(final)

    t = time.perf_counter()
    g, graph_counts = _graph(cfg, pos)
    _PHASES["graph"] = time.perf_counter() - t
    log(f"{graph_counts['edges_after_caps']} edges after caps; {comm.world} rank(s)")
    with _shared_tmp(comm, final, fp) as tmp:
        t = time.perf_counter()
        ranks = comm.gather(_write_tables(comm, cfg, g, pos, tmp, fp))  # also the barrier
        _PHASES["tables"] = time.perf_counter() - t
        per_kind = {kind: [r[kind] for r in ranks] for kind in KINDS}
        for kind in KINDS:
            log(f"{kind}: {sum(c['pairs'] for c in per_kind[kind])} pairs")
        # ru_maxrss is in KiB on Linux.
        usage = resource.getrusage(resource.RUSAGE_SELF)
        per_rank = comm.gather((peak_rss_mb(), usage.ru_utime + usage.ru_stime))
        meta = _meta(cfg, comm, pos, fp, graph_counts, per_kind, start)
        meta["rank_peak_rss_mb"] = [round(x[0], 1) for x in per_rank]
        meta["rank_cpu_seconds"] = [round(x[1], 2) for x in per_rank]
        if is_rank0():
            if pos.user_ids is not None and not isinstance(pos.user_ids, np.ndarray):
                (tmp / "ids").mkdir(exist_ok=True)
                write_ids(tmp / "ids" / "users.parquet", pos.user_ids)
            if pos.item_ids is not None and not isinstance(pos.item_ids, np.ndarray):
                (tmp / "ids").mkdir(exist_ok=True)
                write_ids(tmp / "ids" / "items.parquet", pos.item_ids)
            write_json_atomic(tmp / "_meta.json", meta)
    comm.gather(None)  # nobody returns before the folder is in place
    return meta


def _id_kind(ids: Any) -> str:
    if ids is None:
        return "dense"
    return "original" if isinstance(ids, np.ndarray) else "index (see ids/)"


def _meta(
    cfg: SwingConfig,
    comm: _Comm,
    pos: Positives,
    fp: str,
    graph_counts: dict[str, int],
    per_kind: dict[str, list[dict[str, Any]]],
    start: float,
) -> dict[str, Any]:
    tables: dict[str, Any] = {}
    for kind, ranks in per_kind.items():
        n_anchors = pos.n_items if kind == "item_item" else pos.n_users
        with_nb = sum(c["anchors_with_neighbors"] for c in ranks)
        tables[kind] = {
            "pairs": sum(c["pairs"] for c in ranks),
            "anchors": n_anchors,
            "anchors_with_neighbors": with_nb,
            "coverage": with_nb / n_anchors if n_anchors else 0.0,
            "W": sum(c["contributions"] for c in ranks),
            "work_estimate": ranks[0]["work_estimate"],
            "parts": ranks[0]["parts"],
            "parts_reused": sum(c["parts_reused"] for c in ranks),
            "rank_seconds": [round(c["seconds"], 3) for c in ranks],
        }
    return {
        "schema_version": SCHEMA_VERSION,
        "fingerprint": fp,
        "code_version": code_version("similarity"),
        "input": {"source": pos.source, "fingerprint": pos.fingerprint, "rows_read": pos.rows_read},
        "ids": {"user": _id_kind(pos.user_ids), "item": _id_kind(pos.item_ids)},
        "params": {
            k: getattr(cfg, k)
            for k in (
                "alpha1",
                "alpha2",
                "beta",
                "min_user_items",
                "max_user_items",
                "max_users_per_item",
                "top_k",
                "seed",
            )
        },
        "config": to_dict(cfg),
        "graph": graph_counts,
        "item_item": tables["item_item"],
        "user_user": tables["user_user"],
        "W": sum(t["W"] for t in tables.values()),
        "world_size": comm.world,
        "seconds": time.perf_counter() - start,
        # rank 0's wall seconds per phase; group_init includes waiting for the other
        # ranks to start (their imports), tables waiting for the slowest rank
        "phase_seconds": {k: round(v, 3) for k, v in _PHASES.items()},
    }


@record
def main(argv: list[str] | None = None, prog: str = "dlrrec similarity swing") -> int:
    return run_job(prog, __doc__ or "", SwingConfig, "similarity", run, argv)


if __name__ == "__main__":
    sys.exit(main())
