"""Train/val/test splits as per-row codes (0 = train, 1 = val, 2 = test)."""

from __future__ import annotations

import numpy as np

SPLITS = ("train", "val", "test")
TRAIN, VAL, TEST = 0, 1, 2


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijective, well-mixed hash of uint64 values."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def pair_keys(users: np.ndarray, items: np.ndarray, seed: int) -> np.ndarray:
    """A seeded uint64 hash of each (user, item) pair: equal pairs, equal keys.

    A pure function of the row's own ids, so a streaming build can compute it chunk
    by chunk.
    """
    with np.errstate(over="ignore"):
        x = _mix64(users.astype(np.uint64) + _mix64(np.full(1, seed, np.uint64)))
        return _mix64(x ^ (items.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)))


def random_split(users: np.ndarray, items: np.ndarray, fractions: list[float], seed: int) -> np.ndarray:
    """Train/val/test by a seeded hash of the (user, item) pair, cut at its quantiles.

    Every row of a repeated pair has the same key, so all of them land in one split
    (a test row never meets its own pair's label in train). Rows are ordered by key
    and cut like `temporal_split` cuts timestamps: without repeated pairs the shares
    are exactly round(f_train * n) and round(f_val * n) rows.

    Args:
        users, items: the rows' dense ids, shape [n].
        fractions: train/val/test shares summing to 1.
        seed: the hash seed.

    Returns:
        int8 codes, shape [n].
    """
    codes, _ = cut_at_quantiles(pair_keys(users, items, seed), fractions)
    return codes


def repeated_pairs(users: np.ndarray, items: np.ndarray) -> dict[str, int]:
    """How often (user, item) pairs repeat: `pairs` with more than one row, and the
    `extra_rows` beyond each pair's first."""
    key = users.astype(np.int64) * (int(items.max(initial=0)) + 1) + items.astype(np.int64)
    _, counts = np.unique(key, return_counts=True)
    return {"pairs": int((counts > 1).sum()), "extra_rows": int((counts - 1).sum())}


def temporal_split(timestamps: np.ndarray, fractions: list[float]) -> tuple[np.ndarray, list[int]]:
    """Split by global time: train before the f_train quantile, val up to f_train + f_val.

    Cut-offs are timestamps, so rows with equal timestamps always land in the same
    split (the shares can come out slightly under the fractions when ties straddle
    a cut-off).

    Args:
        timestamps: int64, shape [n].
        fractions: train/val/test shares summing to 1.

    Returns:
        (int8 codes [n], [train_end, val_end]): train is `ts < train_end`, val is
        `train_end <= ts < val_end`, test is `ts >= val_end`.
    """
    return cut_at_quantiles(timestamps, fractions)


def cut_at_quantiles(values: np.ndarray, fractions: list[float]) -> tuple[np.ndarray, list[int]]:
    """Codes by the f_train and f_train + f_val quantiles of `values` (equal values
    share a split); returns the codes and the two cut values."""
    n = len(values)
    ordered = np.sort(values)
    cut1 = ordered[min(int(round(fractions[0] * n)), n - 1)]
    cut2 = ordered[min(int(round((fractions[0] + fractions[1]) * n)), n - 1)]
    codes = np.where(values < cut1, TRAIN, np.where(values < cut2, VAL, TEST))
    return codes.astype(np.int8), [int(cut1), int(cut2)]
