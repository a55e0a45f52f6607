"""python benchmarks/infonce_bench.py [--batches 1024 2048 4096 8192] [--chunk 128] [--extra 0]

The chunked InfoNCE (`trainer.loss.info_nce(..., chunk_size=C)`: a custom autograd
function over row blocks with sparse false-negative masking and the gradient fused
into the forward pass) against the one-piece computation (the dense-masked [B, N]
logits through `F.cross_entropy` and autograd), side by side in one run, forward +
backward, D = 32, float32:

- realistic inputs: anchor ids drawn from a Zipf-like popularity over a 1,682-entity
  catalogue (ML-100K's items), positives likewise, 10% of anchors without a positive,
  so the false-negative masks are as dense as in training; optional extra negatives
  (`--extra M`) and logQ correction (`--logq`);
- time: best of `--repeats` forward + backward passes per implementation, the two
  interleaved so load changes hit both (the load average is printed);
- peak memory: on CUDA `max_memory_allocated`; on CPU each (implementation, B) runs
  once in a fresh subprocess that resets its peak RSS (VmHWM, via /proc/self/clear_refs)
  and reports the peak minus its RSS just before the pass, i.e. the working memory of
  one forward + backward.

It also checks that both give the same loss and gradients. Never run as a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trainer.loss import info_nce  # noqa: E402

CATALOGUE = 1682


def make_inputs(b: int, m: int, d: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    pop = 1.0 / torch.arange(1, CATALOGUE + 1, dtype=torch.float64) ** 0.8  # Zipf-like
    anchor_ids = torch.multinomial(pop, b, replacement=True, generator=g)
    positive_ids = torch.multinomial(pop, b, replacement=True, generator=g)
    positive_ids[torch.rand(b, generator=g) < 0.1] = -1
    negative_ids = torch.randint(0, CATALOGUE, (m,), generator=g)
    q = (pop / pop.sum()).float()
    cand = torch.cat([positive_ids, negative_ids]).clamp_min(0)
    x = {
        "anchor": torch.randn(b, d, generator=g),
        "positive": torch.randn(b, d, generator=g),
        "negatives": torch.randn(m, d, generator=g),
        "anchor_ids": anchor_ids,
        "positive_ids": positive_ids,
        "negative_ids": negative_ids,
        "candidate_q": q[cand],
    }
    return {k: v.to(device) for k, v in x.items()}


def step(x: dict[str, torch.Tensor], chunk: int, logq: bool) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    leaves = [x[k].detach().requires_grad_(True) for k in ("anchor", "positive", "negatives")]
    loss = info_nce(
        leaves[0], leaves[1], x["anchor_ids"], x["positive_ids"], 0.2,
        leaves[2], x["negative_ids"], x["candidate_q"] if logq else None,
        1.0 / CATALOGUE, chunk_size=chunk,
    )  # fmt: skip
    loss.backward()
    return loss.detach(), tuple(t.grad for t in leaves)  # type: ignore[misc]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def vm_hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def peak_child(args: argparse.Namespace, b: int, chunk: int) -> None:
    """One forward + backward in this (fresh) process; prints its working memory in bytes."""
    device = torch.device(args.device)
    step(make_inputs(64, min(args.extra, 64), args.dim, device), min(chunk, 16), args.logq)  # lazy inits
    x = make_inputs(b, args.extra, args.dim, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step(x, chunk, args.logq)
        sync(device)
        print(json.dumps({"peak": torch.cuda.max_memory_allocated() - before}))
        return
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM, the peak RSS, to the current RSS (Linux >= 4.0)
    before = rss_bytes()
    step(x, chunk, args.logq)
    print(json.dumps({"peak": max(vm_hwm_bytes() - before, 0)}))


def peak_bytes(args: argparse.Namespace, b: int, chunk: int) -> int:
    cmd = [sys.executable, __file__, "--peak-child", str(b), str(chunk), *child_flags(args)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return int(json.loads(out.strip().splitlines()[-1])["peak"])


def child_flags(args: argparse.Namespace) -> list[str]:
    flags = ["--extra", str(args.extra), "--dim", str(args.dim), "--device", args.device]
    flags += ["--threads", str(args.threads)] + (["--logq"] if args.logq else [])
    return flags


def time_both(args: argparse.Namespace, b: int) -> tuple[float, float, float, float]:
    """Best-of-repeats seconds (one-piece, chunked) and the max loss / gradient differences."""
    device = torch.device(args.device)
    x = make_inputs(b, args.extra, args.dim, device)
    best = {0: float("inf"), args.chunk: float("inf")}
    results = {}
    for r in range(args.repeats + 1):  # the first round warms up
        for chunk in (0, args.chunk):
            sync(device)
            t = time.perf_counter()
            results[chunk] = step(x, chunk, args.logq)
            sync(device)
            if r:
                best[chunk] = min(best[chunk], time.perf_counter() - t)
    (l0, g0), (l1, g1) = results[0], results[args.chunk]
    dl = float((l0 - l1).abs())
    dg = max(float((a - c).abs().max() / a.abs().max().clamp_min(1e-30)) for a, c in zip(g0, g1) if a is not None and a.numel())
    return best[0], best[args.chunk], dl, dg


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    p.add_argument("--chunk", type=int, default=128)
    p.add_argument("--extra", type=int, default=0, help="extra uniform negatives M")
    p.add_argument("--logq", action="store_true", help="with the logQ correction")
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--peak-child", type=int, nargs=2, metavar=("B", "CHUNK"), help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.peak_child:
        peak_child(args, *args.peak_child)
        return
    print(
        f"InfoNCE forward+backward, D={args.dim}, M={args.extra} extra negatives, logQ={args.logq}, "
        f"chunk={args.chunk} rows, device={args.device}, torch threads={args.threads}, "
        f"load average {os.getloadavg()[0]:.2f}, best of {args.repeats}"
    )
    head = f"{'B':>6} {'one-piece ms':>13} {'chunked ms':>11} {'speedup':>8} {'one-piece MiB':>14} {'chunked MiB':>12} {'mem ratio':>10}  max |dloss|, max rel |dgrad|"
    print(head)
    print("-" * len(head))
    for b in args.batches:
        t0, t1, dl, dg = time_both(args, b)
        m0, m1 = peak_bytes(args, b, 0), peak_bytes(args, b, args.chunk)
        print(
            f"{b:>6} {t0 * 1e3:>13.1f} {t1 * 1e3:>11.1f} {t0 / t1:>7.2f}x {m0 / 2**20:>14.1f} "
            f"{m1 / 2**20:>12.1f} {m0 / max(m1, 1):>9.1f}x  {dl:.1e}, {dg:.1e}",
            flush=True,
        )


if __name__ == "__main__":
    main()
