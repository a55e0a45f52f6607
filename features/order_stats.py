"""Exact order statistics of a value stream too large to sort in memory.

The splits cut a per-row value (the pair hash, or the timestamp) at its quantiles, and
the temporal profiles cut timestamps into blocks.  `values_at_ranks` finds the exact
k-th smallest values with a few passes over the stream and bounded memory: each pass
narrows every wanted rank's value range with a 65,536-bin histogram, and once a range
holds at most `collect_cap` values they are collected and sorted.  Timestamps with
huge ties still end (a range of width 1 is one value).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

N_BINS = 1 << 16
COLLECT_CAP = 1 << 22  # values held at once when a rank's range is small enough
_SIGN = np.uint64(1 << 63)


def to_keys(values: np.ndarray) -> np.ndarray:
    """Order-preserving uint64 keys of int64 or uint64 values."""
    if values.dtype == np.uint64:
        return values
    return np.asarray(values, dtype=np.int64).view(np.uint64) ^ _SIGN


def _from_key(key: int, signed: bool) -> int:
    if not signed:
        return key
    return int((np.array([key], dtype=np.uint64) ^ _SIGN).view(np.int64)[0])


@dataclass
class _Target:
    rank: int  # the wanted rank among the values in [lo, hi]
    lo: int
    hi: int  # inclusive
    count: int  # values in [lo, hi]
    value: int | None = None


def _pass(chunks: Iterator[np.ndarray], open_: list[_Target], cap: int) -> None:
    """One pass: histogram or collect each open target's range, then narrow it."""
    hist = {id(t): np.zeros(N_BINS, dtype=np.int64) for t in open_ if t.count > cap}
    held: dict[int, list[np.ndarray]] = {id(t): [] for t in open_ if t.count <= cap}
    width = {id(t): -(-(t.hi - t.lo + 1) // N_BINS) for t in open_}
    for values in chunks:
        keys = to_keys(values)
        for t in open_:
            sel = keys[(keys >= np.uint64(t.lo)) & (keys <= np.uint64(t.hi))]
            if id(t) in held:
                held[id(t)].append(sel)
            else:
                bins = (sel - np.uint64(t.lo)) // np.uint64(width[id(t)])
                hist[id(t)] += np.bincount(bins.astype(np.int64), minlength=N_BINS)
    for t in open_:
        if id(t) in held:
            t.value = int(np.sort(np.concatenate(held[id(t)]))[t.rank])
            continue
        cum = np.cumsum(hist[id(t)])
        b = int(np.searchsorted(cum, t.rank, side="right"))
        below = int(cum[b - 1]) if b else 0
        w = width[id(t)]
        t.rank, t.count = t.rank - below, int(hist[id(t)][b])
        t.lo, t.hi = t.lo + b * w, min(t.hi, t.lo + (b + 1) * w - 1)
        if t.lo == t.hi:
            t.value = t.lo


def values_at_ranks(
    chunks: Callable[[], Iterator[np.ndarray]],
    n: int,
    ranks: Sequence[int],
    signed: bool,
    cap: int = COLLECT_CAP,
) -> list[int]:
    """The values at 0-based `ranks` of the sorted stream (like `np.sort(all)[ranks]`).

    Args:
        chunks: a fresh iterator over the stream's arrays per call (one call per pass).
        n: the stream's length; every rank must be in [0, n).
        signed: the values are int64 (else uint64).
        cap: the most values collected for one rank at once.
    """
    targets = [_Target(rank=int(r), lo=0, hi=(1 << 64) - 1, count=n) for r in ranks]
    while open_ := [t for t in targets if t.value is None]:
        _pass(chunks(), open_, cap)
    return [_from_key(int(t.value), signed) for t in targets]  # type: ignore[arg-type]
