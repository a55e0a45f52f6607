"""Train/val/test splits as per-row codes (0 = train, 1 = val, 2 = test)."""

from __future__ import annotations

import numpy as np

SPLITS = ("train", "val", "test")
TRAIN, VAL, TEST = 0, 1, 2


def random_split(n: int, fractions: list[float], seed: int) -> np.ndarray:
    """A seeded permutation cut into train/val/test shares.

    Args:
        n: number of rows.
        fractions: train/val/test shares summing to 1.
        seed: permutation seed.

    Returns:
        int8 codes, shape [n]: round(f_train * n) zeros, round(f_val * n) ones, the rest twos.
    """
    perm = np.random.default_rng(seed).permutation(n)
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    codes = np.full(n, TEST, dtype=np.int8)
    codes[perm[:n_train]] = TRAIN
    codes[perm[n_train : n_train + n_val]] = VAL
    return codes


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
    n = len(timestamps)
    ordered = np.sort(timestamps)
    cut1 = ordered[min(int(round(fractions[0] * n)), n - 1)]
    cut2 = ordered[min(int(round((fractions[0] + fractions[1]) * n)), n - 1)]
    codes = np.where(timestamps < cut1, TRAIN, np.where(timestamps < cut2, VAL, TEST))
    return codes.astype(np.int8), [int(cut1), int(cut2)]
