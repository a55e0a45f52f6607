"""An iid raw-reviews dataset: each user's labels are independent coin flips.

User u rates `per_user` distinct random items at random times; each rating is positive
(4-5) with the user's own probability p_u ~ U(0.3, 0.7), independently of the item, the
time and every other rating.  So in the data-generating process no feature built from
other rows carries information about a row's own label beyond what the owner's p_u
gives: the reference of the side-channel test (tests/features/test_side_channel.py).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from features.schema import RAW_INTERACTIONS, RAW_ITEMS, RAW_USERS

GENRES = ["Action", "Comedy", "Drama", "Thriller", "Children's", "Horror", "Romance"]


def iid_tables(n_users: int, n_items: int, per_user: int, seed: int) -> dict[str, pa.Table]:
    rng = np.random.default_rng(seed)
    items = pa.Table.from_pylist(
        [
            {
                "item": f"i{i}",
                "title": f"Film number {i} of {GENRES[i % 7]}",
                "categories": sorted(
                    rng.choice(GENRES, rng.integers(1, 4), replace=False).tolist()
                ),
                "year": int(rng.integers(1950, 2000)),
            }
            for i in range(n_items)
        ],
        schema=RAW_ITEMS,
    )
    users = pa.Table.from_pylist(
        [
            {
                "user": f"u{u}",
                "age": int(rng.integers(15, 70)),
                "gender": "MF"[u % 2],
                "occupation": "writer",
                "zip": f"{rng.integers(10000, 99999)}",
            }
            for u in range(n_users)
        ],  # fmt: skip
        schema=RAW_USERS,
    )
    p = rng.uniform(0.3, 0.7, n_users)
    rows = []
    for u in range(n_users):
        for i in rng.choice(n_items, per_user, replace=False):
            pos = rng.random() < p[u]
            rows.append(
                {
                    "user": f"u{u}",
                    "item": f"i{i}",
                    "rating": float(rng.integers(4, 6) if pos else rng.integers(1, 4)),
                    "timestamp": int(rng.integers(0, 10**6)),
                    "text": None,
                    "review_id": f"u{u}_i{i}",
                }
            )
    inter = pa.Table.from_pylist(rows, schema=RAW_INTERACTIONS)
    return {"interactions.parquet": inter, "items.parquet": items, "users.parquet": users}
