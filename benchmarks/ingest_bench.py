"""python benchmarks/ingest_bench.py [--rows 10000000] [--batch-rows 262144] [--yelp-rows 0] [--keep]

The features stage's non-embedding path at scale: seeded synthetic raw reviews
(features/schema.py, written in 1M-row chunks to a temp folder) go through

    read_source("raw")   streaming scan (one row group at a time): types, nulls, ratings
                         in rating_range, blank texts, unique review ids, known ids
    entity_order/lookup  contiguous user/item indices
    random_split         seeded 80/10/10 by (user, item) hash
    sparse_columns       train vocabularies, categories capped at 11, OOV counts
    dense                year/age standardised, price/has_price

in a fresh process, which reports rows/s and its peak RSS (target <= 8 GB at 10M
rows).  Side by side, in another fresh process, a bare `pq.read_table` of the same
interactions file (no checks, no features) gives the baseline for the ratios.
MiniLM embeddings and profiles are left out: they scale with items, not reviews.
`--yelp-rows N` also reads N synthetic reviews in the Yelp JSON Lines format through
the yelp adapter (parsed line by line in chunks of features/sources/records.py
CHUNK_ROWS records) in a third fresh process, and reports its rows/s and peak RSS.
Wall clock on whatever else the machine is doing (the load average is printed).
Never run as a test.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from features.schema import RAW_INTERACTIONS, RAW_ITEMS, RAW_USERS  # noqa: E402

CHUNK = 1_000_000
WORDS = (
    "great food service slow friendly pricey cheap fresh stale tasty bland cozy loud "
    "clean dirty quick portions sauce crust spicy sweet salty staff wait table view"
).split()


def power_law_ids(
    n: int, cdf: np.ndarray, perm: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """n ids with p(rank r) ~ cdf's increments, ranks mapped to ids by `perm`."""
    ranks = np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right")
    return perm[np.minimum(ranks, len(perm) - 1)]


def write_synthetic(
    raw: Path,
    n_rows: int,
    seed: int = 0,
    *,
    n_users: int | None = None,
    n_items: int | None = None,
    power_law: bool = False,
) -> dict[str, int]:
    """interactions/items/users.parquet with `n_rows` reviews, generated chunk by chunk.

    Entities default to n_rows / 10 users and n_rows / 100 items.  By default users are
    uniform and items Zipf(1.3)-like (clipped); `power_law` draws users with p ~
    rank**-0.8 and items with p ~ rank**-0.9 over the whole range, ranks shuffled over
    the ids (benchmarks/scale_bench.py).  Memory: the entity tables plus one chunk.
    """
    rng = np.random.default_rng(seed)
    n_users = n_users or max(n_rows // 10, 10)
    n_items = n_items or max(n_rows // 100, 10)
    cats = np.array([f"cat{c:03d}" for c in range(200)])
    lengths = rng.integers(0, 16, n_items)  # up to 15 categories: the cap of 11 bites
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    tier = rng.integers(0, 5, n_items)
    items = pa.table(
        {
            "item": pa.array([f"i{i}" for i in range(n_items)]),
            "title": pa.array([f"Place {i}" for i in range(n_items)]),
            "categories": pa.ListArray.from_arrays(
                pa.array(offsets), pa.array(cats[rng.integers(0, 200, int(offsets[-1]))])
            ),
            "year": pa.array(rng.integers(1950, 2024, n_items).astype(np.int32)),
            "price_tier": pa.array(tier.astype(np.int32), mask=tier == 0),
        }
    )
    items = items.cast(pa.schema([*RAW_ITEMS, pa.field("price_tier", pa.int32())]))
    pq.write_table(items, raw / "items.parquet")
    users = pa.table(
        {
            "user": pa.array([f"u{u}" for u in range(n_users)]),
            "age": pa.array(rng.integers(12, 80, n_users).astype(np.int32)),
            "gender": pa.array(np.array(["F", "M"])[rng.integers(0, 2, n_users)]),
            "occupation": pa.array(
                np.array(["a", "b", "c", "d", "e"])[rng.integers(0, 5, n_users)]
            ),
            "zip": pa.array([f"{z:05d}" for z in rng.integers(0, 99999, n_users)]),
        },
        schema=RAW_USERS,
    )
    pq.write_table(users, raw / "users.parquet")
    # 5,000 distinct review texts of 6-16 words; rows pick one (and a null now and then).
    sentences = pa.array(
        [" ".join(rng.choice(WORDS, rng.integers(6, 17))) + "." for _ in range(5000)]
    )
    if power_law:  # (drawn only here, so the default data stay what they were)
        user_cdf = np.cumsum((np.arange(n_users) + 1.0) ** -0.8)
        item_cdf = np.cumsum((np.arange(n_items) + 1.0) ** -0.9)
        user_perm, item_perm = rng.permutation(n_users), rng.permutation(n_items)
    with pq.ParquetWriter(raw / "interactions.parquet", RAW_INTERACTIONS) as w:
        for start in range(0, n_rows, CHUNK):
            n = min(CHUNK, n_rows - start)
            if power_law:
                item = power_law_ids(n, item_cdf, item_perm, rng)
            else:  # Zipf-like item popularity, uniform users.
                item = np.minimum(rng.zipf(1.3, n) - 1, n_items - 1)
            ids = pc.cast(pa.array(np.arange(start, start + n)), pa.string())
            text_idx = rng.integers(0, len(sentences), n)
            if power_law:
                user = power_law_ids(n, user_cdf, user_perm, rng)
            else:
                user = rng.integers(0, n_users, n)
            chunk = pa.table(
                {
                    "user": pc.binary_join_element_wise(
                        "u", pc.cast(pa.array(user), pa.string()), ""
                    ),
                    "item": pc.binary_join_element_wise(
                        "i", pc.cast(pa.array(item), pa.string()), ""
                    ),
                    "rating": pa.array(rng.integers(1, 6, n).astype(np.float32)),
                    "timestamp": pa.array(rng.integers(1_200_000_000, 1_700_000_000, n)),
                    "text": sentences.take(pa.array(text_idx, mask=rng.random(n) < 0.05)),
                    "review_id": pc.binary_join_element_wise("r", ids, ""),
                },
                schema=RAW_INTERACTIONS,
            )
            w.write_table(chunk)
    return {"rows": n_rows, "users": n_users, "items": n_items}


def write_yelp(folder: Path, n_rows: int, seed: int = 0) -> None:
    """review.json + business.json in the Yelp Open Dataset's schema."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    n_users, n_items = max(n_rows // 10, 10), max(n_rows // 100, 10)
    with open(folder / "business.json", "w") as f:
        for b in range(n_items):
            rec = {
                "business_id": f"b{b}",
                "name": f"Place {b}",
                "categories": ", ".join(f"cat{c}" for c in rng.integers(0, 200, 4)),
                "attributes": {"RestaurantsPriceRange2": str(rng.integers(1, 5))},
            }
            f.write(json.dumps(rec) + "\n")
    with open(folder / "review.json", "w") as f:
        for start in range(0, n_rows, CHUNK):
            n = min(CHUNK, n_rows - start)
            users, stars = rng.integers(0, n_users, n), rng.integers(1, 6, n)
            items = np.minimum(rng.zipf(1.3, n) - 1, n_items - 1)
            words = rng.integers(0, len(WORDS), (n, 12))
            lines = []
            for i in range(n):
                review: dict[str, object] = {
                    "review_id": f"r{start + i}",
                    "user_id": f"u{users[i]}",
                    "business_id": f"b{items[i]}",
                    "stars": float(stars[i]),
                    "text": " ".join(WORDS[w] for w in words[i]) + ".",
                    "date": "2019-02-11 12:01:00",
                }
                lines.append(json.dumps(review))
            f.write("\n".join(lines) + "\n")


def read_yelp(folder: Path) -> dict:
    from features.sources import read_source

    t0 = time.perf_counter()
    raw = read_source("yelp", folder)
    return {
        "rows": raw.interactions.num_rows,
        "seconds": {"total": time.perf_counter() - t0},
        "peak_rss_gib": peak_rss_gib(),
    }


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def ingest(raw: Path, batch_rows: int) -> dict[str, float]:
    """The non-embedding path of features/main.py `run`, stage by stage, timed."""
    from features import examples, io, split
    from features.dense import item_prices, price_features, standardize
    from features.vocab import entity_order, lookup

    t: dict[str, float] = {}
    t0 = time.perf_counter()
    io.SCAN_BATCH_ROWS = batch_rows
    raw_tables = io.read_raw_reviews(raw, (1.0, 5.0), "error", batch_rows)
    t["scan_validate"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    user_perm, _ = entity_order(raw_tables.users["user"].combine_chunks())
    item_perm, _ = entity_order(raw_tables.items["item"].combine_chunks())
    users, items = raw_tables.users.take(user_perm), raw_tables.items.take(item_perm)
    inter = raw_tables.interactions
    row_user = lookup(inter["user"], users["user"].combine_chunks())
    row_item = lookup(inter["item"], items["item"].combine_chunks())
    t["index"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    codes = split.random_split(row_user, row_item, [0.8, 0.1, 0.1], 0)
    train = codes == split.TRAIN
    t["split"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    train_rows = {
        "user": np.bincount(row_user[train], minlength=users.num_rows),
        "item": np.bincount(row_item[train], minlength=items.num_rows),
    }
    enc = examples.entity_sparse(
        users, items, np.flatnonzero(train_rows["user"]), np.flatnonzero(train_rows["item"]), 1, 11
    )
    sparse, vocabs, truncated = enc.rows(row_user, row_item), enc.vocabs, enc.truncated
    oov = examples.oov_counts(sparse, codes)
    t["vocab_sparse"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    rows_of = {"user": row_user, "item": row_item}
    dense = {
        n: standardize(values, train_rows[kind])[0][rows_of[kind]]
        for n, (kind, values) in examples.dense_inputs(users, items).items()
    }
    price, info = price_features(*item_prices(items), train_rows["item"])
    dense.update({n: v[row_item] for n, v in price.items()})
    t["dense"] = time.perf_counter() - t1
    t["total"] = time.perf_counter() - t0
    assert sorted(dense) == ["age", "has_price", "price", "year"] and info["present"]
    return {
        "rows": inter.num_rows,
        "seconds": t,
        "peak_rss_gib": peak_rss_gib(),
        "categories_vocab": len(vocabs["categories"]),
        "truncated_lists": truncated,
        "oov_category_values_test": oov["categories"]["test"],
    }


def bare_read(raw: Path) -> dict[str, float]:
    t0 = time.perf_counter()
    table = pq.read_table(raw / "interactions.parquet")
    return {
        "rows": table.num_rows,
        "seconds": {"total": time.perf_counter() - t0},
        "peak_rss_gib": peak_rss_gib(),
    }


def child(mode: str, raw: Path, batch_rows: int) -> dict:
    """Run one measurement in a fresh interpreter, so its peak RSS is its own."""
    cmd = [sys.executable, __file__, f"--{mode}", str(raw), "--batch-rows", str(batch_rows)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--batch-rows", type=int, default=1 << 18)
    p.add_argument("--yelp-rows", type=int, default=0, help="also time the yelp adapter")
    p.add_argument("--keep", action="store_true", help="keep the temp folder")
    p.add_argument("--ingest", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--bare", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--yelp", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.yelp:
        print(json.dumps(read_yelp(args.yelp)))
        return
    if args.ingest:
        print(json.dumps(ingest(args.ingest, args.batch_rows)))
        return
    if args.bare:
        print(json.dumps(bare_read(args.bare)))
        return

    tmp = Path(tempfile.mkdtemp(prefix="ingest_bench_"))
    try:
        t0 = time.perf_counter()
        shape = write_synthetic(tmp, args.rows)
        gen_s = time.perf_counter() - t0
        size = (tmp / "interactions.parquet").stat().st_size / 2**30
        print(
            f"synthetic reviews: {shape['rows']:,} rows, {shape['users']:,} users, "
            f"{shape['items']:,} items; interactions.parquet {size * 1024:.0f} MiB, "
            f"generated in {gen_s:.1f} s"
        )
        base = child("bare", tmp, args.batch_rows)
        ours = child("ingest", tmp, args.batch_rows)
        n = ours["rows"]
        print(f"load average {os.getloadavg()[0]:.2f}; batch_rows {args.batch_rows:,}")
        print(f"{'':34} {'seconds':>8} {'rows/s':>12} {'peak RSS GiB':>13}")
        for name, r in (
            ("bare pq.read_table (baseline)", base),
            ("ingest (non-embedding path)", ours),
        ):
            s = r["seconds"]["total"]
            print(f"{name:34} {s:8.1f} {n / s:12,.0f} {r['peak_rss_gib']:13.2f}")
        print("ingest stages (s): " + ", ".join(f"{k} {v:.1f}" for k, v in ours["seconds"].items()))
        print(
            f"ratios: ingest rows/s / bare read rows/s = "
            f"{base['seconds']['total'] / ours['seconds']['total']:.2f}x; "
            f"ingest peak RSS / bare read peak RSS = {ours['peak_rss_gib'] / base['peak_rss_gib']:.2f}x"
        )
        gb = ours["peak_rss_gib"] * 2**30 / 1e9
        verdict = "within" if gb <= 8 else "OVER"
        print(f"ingest peak RSS {gb:.2f} GB: {verdict} the 8 GB target")
        print(
            f"checks: {ours['truncated_lists']:,} category lists cut to 11, categories vocab "
            f"{ours['categories_vocab']}, {ours['oov_category_values_test']:,} OOV category "
            "values in test"
        )
        if args.yelp_rows:
            t0 = time.perf_counter()
            write_yelp(tmp / "yelp", args.yelp_rows)
            size = (tmp / "yelp" / "review.json").stat().st_size / 2**20
            print(
                f"yelp review.json: {args.yelp_rows:,} reviews, {size:.0f} MiB, written in "
                f"{time.perf_counter() - t0:.1f} s"
            )
            y = child("yelp", tmp / "yelp", args.batch_rows)
            s = y["seconds"]["total"]
            print(
                f"yelp adapter (JSON Lines, chunked): {s:.1f} s, {y['rows'] / s:,.0f} rows/s, "
                f"peak RSS {y['peak_rss_gib'] * 2**30 / 1e9:.2f} GB"
            )
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
