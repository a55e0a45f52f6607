"""Dense features: standardisation with training-split statistics, and the price tier."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# The paper's LLM price categories as tiers on the `$` scale, so a category and a
# `$`-count can share the `price_tier` column ("none" is a missing price, not 0).
PRICE_CATEGORY_TIER = {"cheap": 1, "fair": 2, "overpriced": 3}


def standardize(values: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, float, float]:
    """z = (x - mean) / std, mean and std over the training rows; missing -> 0.

    The values are per owner (an entity, or a row) and `weights` count each owner's
    training rows, so the statistics are those of the training rows without a per-row
    array: a user's age weighs as many times as the user has training rows.

    Args:
        values: float64, shape [n]; NaN marks a missing value.
        weights: shape [n], training rows per value (bool: is a training row).

    Returns:
        (float32 z [n], mean, std).  Missing values take the training mean, so they
        standardise to 0.  A constant (or absent) training column has std 1.
    """
    w = np.asarray(weights, dtype=np.float64)
    keep = (w > 0) & ~np.isnan(values)
    x, w = values[keep], w[keep]
    total = float(w.sum())
    mean = float(np.dot(w, x) / total) if total else 0.0
    std = float(np.sqrt(np.dot(w, (x - mean) ** 2) / total)) if total else 0.0
    if not np.isfinite(std) or std == 0.0:
        std = 1.0
    z = (np.where(np.isnan(values), mean, values) - mean) / std
    return z.astype(np.float32), mean, std


def item_prices(items: pa.Table) -> tuple[np.ndarray, str | None]:
    """Each item's price on one numeric scale, NaN where it has none.

    `price_tier` (1..4, a `$` count: Yelp, Google Local, or an LLM category through
    PRICE_CATEGORY_TIER) is used as it is.  Otherwise `price` (a currency amount:
    Amazon, a generic table) as log1p(price), because amounts span orders of
    magnitude and z-scores of the raw amounts would be dominated by a few.

    Returns:
        (float64 [I], the column used: "price_tier" | "price" | None when no item has one).
    """
    for name in ("price_tier", "price"):
        if name in items.column_names and items[name].null_count < items.num_rows:
            x = np.asarray(
                pc.cast(items[name], pa.float64()).fill_null(np.nan).to_numpy(), dtype=np.float64
            )
            x = np.where(np.isfinite(x) & (x >= 0), x, np.nan)
            return (np.log1p(x) if name == "price" else x), name
    return np.full(items.num_rows, np.nan), None


def price_features(
    price: np.ndarray, source: str | None, train_rows: np.ndarray
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The dense `price` (z-scored with training rows) and `has_price` (0/1) per owner.

    A missing price standardises to 0 and has `has_price` 0, so "none" never looks
    like an average price.  When no training row's item has a price (MovieLens) both
    features are absent rather than constant columns.  A row takes its owner's values
    (its item's, or its own for the LLM's per-row price).

    Args:
        price: float64 [P] from `item_prices` (NaN = none).
        source: the column it came from, for `_meta.json`.
        train_rows: int [P] training rows per owner.

    Returns:
        ({"price": float32 [P], "has_price": float32 [P]} or {},
         the `_meta.json` record: source, counts, train mean/std, present).
    """
    has = ~np.isnan(price)
    info: dict[str, Any] = {
        "source": source,
        "items_with_price": int(np.sum(has)),
        "train_rows_with_price": int(np.sum(np.where(has, train_rows, 0))),
    }
    if not info["train_rows_with_price"]:
        info["present"] = False
        return {}, info
    z, mean, std = standardize(price, train_rows)
    info.update(present=True, mean=mean, std=std)
    return {"price": z, "has_price": has.astype(np.float32)}, info
