"""python benchmarks/embed_bench.py [--unique 1000] [--dup 3] [--batch-size 256]

features/text.py `embed_texts` against calling sentence-transformers `encode` on the
same texts directly (all-MiniLM-L6-v2 on CPU), in one run, on seeded synthetic
review-like texts (20-60 words from a 2,000-word vocabulary):

1. Overhead: U distinct texts, cold cache: throughput of embed_texts (hashing,
   SQLite writes, float16 rounding, chunking) relative to direct encode (target >= 0.9x).
2. Dedup: the U texts repeated to U*dup (shuffled), no cache: speedup over direct
   encode of all U*dup texts.
3. Cache: the same U*dup texts again with the warm cache: speedup over direct encode.

Each timing is the best of --repeats runs; wall clock on whatever else the machine
is doing (the load average is printed).  Never run as a test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from features import text  # noqa: E402


def synthetic_texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = ["".join(rng.choice(letters, rng.integers(3, 9))) for _ in range(2000)]
    out = []
    for i in range(n):
        words = rng.choice(vocab, rng.integers(20, 61))
        out.append(f"Review {i}: " + " ".join(words) + ".")
    return out


def best(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--unique", type=int, default=1000)
    p.add_argument("--dup", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()

    path = text.model_path("")
    model = text.load_text_model(path)
    uniq = synthetic_texts(args.unique)
    rng = np.random.default_rng(1)
    dup = [uniq[i] for i in rng.permutation(np.repeat(np.arange(len(uniq)), args.dup))]
    bs = args.batch_size

    def direct(texts: list[str]) -> np.ndarray:
        return model.encode(texts, batch_size=bs, normalize_embeddings=True, convert_to_numpy=True)

    direct(uniq[:64])  # warm-up: first-call allocations and thread pools
    tmp = Path(tempfile.mkdtemp(prefix="embed_bench_"))

    def ours_cold(texts: list[str]) -> np.ndarray:
        shutil.rmtree(tmp / "cache", ignore_errors=True)
        return text.embed_texts(texts, path, bs, cache_dir=str(tmp / "cache"), progress=False)

    try:
        t_direct_u = best(lambda: direct(uniq), args.repeats)
        t_ours_u = best(lambda: ours_cold(uniq), args.repeats)
        t_direct_d = best(lambda: direct(dup), 1)
        t_dedup = best(lambda: text.embed_texts(dup, path, bs, progress=False), args.repeats)
        ours_cold(dup)  # fill the cache
        t_warm = best(
            lambda: text.embed_texts(dup, path, bs, cache_dir=str(tmp / "cache"), progress=False),
            args.repeats,
        )
        diff = np.abs(text.embed_texts(uniq, path, bs, progress=False) - direct(uniq)).max()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    n_u, n_d = len(uniq), len(dup)
    load = os.getloadavg()
    print(
        f"all-MiniLM-L6-v2 on CPU, batch {bs}, {os.cpu_count()} cores, load average {load[0]:.1f}"
    )
    print(f"{'case':<44}{'texts':>7}{'seconds':>9}{'texts/s':>10}{'vs direct':>11}")
    rows = [
        ("direct encode, distinct texts", n_u, t_direct_u, t_direct_u),
        ("embed_texts, distinct texts, cold cache", n_u, t_ours_u, t_direct_u),
        (f"direct encode, texts x{args.dup} duplicated", n_d, t_direct_d, t_direct_d),
        (f"embed_texts, x{args.dup} duplicated, no cache", n_d, t_dedup, t_direct_d),
        (f"embed_texts, x{args.dup} duplicated, warm cache", n_d, t_warm, t_direct_d),
    ]
    for name, n, t, ref in rows:
        print(f"{name:<44}{n:>7}{t:>9.2f}{n / t:>10.0f}{ref / t:>10.2f}x")
    print(f"max |embed_texts - direct| over the distinct texts: {diff:.2e} (float16 rounding)")


if __name__ == "__main__":
    main()
