"""Dense features: standardisation with training-split statistics."""

from __future__ import annotations

import numpy as np


def standardize(values: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, float, float]:
    """z = (x - mean) / std with mean/std over the training rows; missing -> 0.

    Args:
        values: float64, shape [n]; NaN marks a missing value.
        train: bool, shape [n]; which rows are training rows.

    Returns:
        (float32 z [n], mean, std).  Missing values take the training mean, so they
        standardise to 0.  A constant (or absent) training column has std 1.
    """
    x = values[train]
    x = x[~np.isnan(x)]
    mean = float(x.mean()) if x.size else 0.0
    std = float(x.std()) if x.size else 0.0
    if not np.isfinite(std) or std == 0.0:
        std = 1.0
    z = (np.where(np.isnan(values), mean, values) - mean) / std
    return z.astype(np.float32), mean, std
