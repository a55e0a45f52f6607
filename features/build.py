"""The streaming features build, as named steps (features/main.py `run` calls them in order).

    read_input     entity tables, and the row index (pass 1: features/rowindex.py)
    embed_items    MiniLM item vectors (per item)
    cut_split      exact split cut-offs and profile time blocks (features/order_stats.py)
    spill_rows     pass 2: per-entity tallies; every row to its user (and item) bucket
    owner_jobs     per bucket: profiles, users entity rows, owned statistics and bags
    encode         per-entity sparse ids, standardised dense values and prices
    write_rows     pass 3: the example parts of each split, in input order

Only the row index, the spills and one chunk or bucket at a time are ever held: memory
does not grow with the number of rows (docs/scale.md measures it).  Per-entity tables
(ids, attributes, counts, item vectors) are held whole.  The llm/images sections
stream too: `content_chunks` reads the interactions again beside the index, chunk by
chunk, and features/content.py spills what it needs per entity partition; what they
keep is per (entity, slot) key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dlrrec.config import DataError
from features import examples, history, split, stats
from features.bad_rows import no_skips
from features.config import FeaturesConfig
from features.content import ReviewContent, add_row_columns, key_column
from features.content_rows import RowChunk
from features.dense import item_prices, price_features, standardize
from features.io import (
    ExamplesWriter,
    check_unique,
    open_scan,
    raw_paths,
    scan_batches,
    scan_table,
    vector_writer,
)
from features.order_stats import values_at_ranks
from features.owners import SPILL_SCHEMA, OwnerPlan, item_job, user_job
from features.rowindex import RowIndex, build_index, drop_rows, repeated_review_rows
from features.schema import PROFILE_KEY
from features.sources import stage_source
from features.spill import SeqJoin, Spill, bucket_of, owner_ranges
from features.vocab import entity_order
from features.workers import Workers

BUCKET_ROWS = 1 << 20  # rows per owner bucket: what one bucket job holds


# columns -> the interactions' batches (those columns that exist) in index order, again
Reviews = Callable[[list[str]], Iterator[pa.RecordBatch]]


@dataclass
class Input:
    users: pa.Table  # in index order
    items: pa.Table
    index: RowIndex
    skipped: dict[str, int]
    id_order: dict[str, str]
    reviews: Reviews | None  # the interactions again, only when llm/images need them


def _entities(users: pa.Table, items: pa.Table) -> tuple[pa.Table, pa.Table, dict[str, str]]:
    user_perm, user_order = entity_order(users["user"].combine_chunks())
    item_perm, item_order = entity_order(items["item"].combine_chunks())
    return users.take(user_perm), items.take(item_perm), {"user": user_order, "item": item_order}


class _RawStream:
    """The raw source's interactions, streamed, without the repeated review ids; `again`
    streams them once more (for the llm/images steps), the ids to drop known by then."""

    def __init__(self, cfg: FeaturesConfig, work: Path, skipped: dict[str, int]) -> None:
        self.path = raw_paths(cfg.raw_dir)["interactions.parquet"]
        self.range = (cfg.rating_range[0], cfg.rating_range[1]) if cfg.rating_range else None
        self.cfg, self.work, self.skipped = cfg, work, skipped
        self.drop = np.zeros(0, dtype=np.int64)

    def first(self) -> Iterator[pa.RecordBatch]:
        if "review_id" in open_scan(self.path)[1].names:
            self.drop, self.skipped["duplicate_review_id"] = repeated_review_rows(
                self.path, self.range, self.cfg.on_bad_rows, self.work
            )
        yield from self._kept([], self.skipped)

    def again(self, columns: list[str]) -> Iterator[pa.RecordBatch]:
        """`columns` of the kept rows; bad rows are dropped, not counted again."""
        return self._kept(columns, None)

    def _kept(self, columns: list[str], skipped: dict[str, int] | None) -> Iterator[pa.RecordBatch]:
        batches = scan_batches(self.path, self.range, self.cfg.on_bad_rows, skipped=skipped)
        for b in drop_rows(batches, self.drop):
            keep = [c for c in columns if c in b.schema.names]
            yield b.select(keep) if keep else b


def read_input(cfg: FeaturesConfig, work: Path, workers: Workers) -> Input:
    """Entity tables (whole) and the row index (streamed: a review source is first staged
    as raw interactions under `work`).  The llm/images steps get a way to stream the
    interactions again (`Input.reviews`), never the interactions whole."""
    skipped = no_skips()
    content = cfg.llm is not None or cfg.images is not None
    rating_range = (cfg.rating_range[0], cfg.rating_range[1]) if cfg.rating_range else None
    reviews: Reviews | None = None
    if cfg.source == "raw":
        paths = raw_paths(cfg.raw_dir)
        open_scan(paths["interactions.parquet"])  # its columns are checked first, as before
        users, items = (scan_table(paths[f"{n}.parquet"])[0] for n in ("users", "items"))
        check_unique(paths["items.parquet"], items, "item")
        check_unique(paths["users.parquet"], users, "user")
        stream = _RawStream(cfg, work, skipped)
        batches: Iterator[pa.RecordBatch] = stream.first()
        named = {n: paths[f"{n}.parquet"] for n in ("interactions", "users", "items")}
        reviews = stream.again if content else None
    else:
        staged = stage_source(cfg.source, cfg.raw_dir, work / "source", cfg.files, cfg.columns,
                              rating_range, cfg.on_bad_rows)  # fmt: skip
        users, items, skipped = staged.users, staged.items, staged.skipped
        batches = staged.batches()
        named = {n: Path(cfg.raw_dir) / n for n in ("interactions", "users", "items")}
        if content:

            def reviews(columns: list[str]) -> Iterator[pa.RecordBatch]:
                return staged.batches([c for c in columns if c in staged.schema.names] or None)

    users, items, id_order = _entities(users, items)
    entity_ids = (users["user"].combine_chunks(), items["item"].combine_chunks())
    index = build_index(batches, entity_ids, cfg.seed, work / "index.parquet", named, workers)
    if index.rows == 0:
        raise DataError(f"{named['interactions']}: on_bad_rows=skip dropped every row ({skipped})")
    return Input(users, items, index, skipped, id_order, reviews)


class _Cursor:
    """Rows of a batch stream, taken n at a time (to line them up with index chunks)."""

    def __init__(self, batches: Iterator[pa.RecordBatch]) -> None:
        self._batches = batches
        self._rest: pa.Table | None = None

    def take(self, n: int) -> pa.Table:
        parts = [self._rest] if self._rest is not None else []
        have = self._rest.num_rows if self._rest is not None else 0
        while have < n:
            batch = next(self._batches)
            parts.append(pa.Table.from_batches([batch]))
            have += batch.num_rows
        whole = pa.concat_tables(parts)
        self._rest = whole.slice(n)
        return whole.slice(0, n)


def content_chunks(inp: Input, sp: Split, plan: OwnerPlan, columns: list[str]) -> Iterator[RowChunk]:
    """The index in chunks, each with its rows' split, profile slot and the interactions'
    `columns` (those that exist; [] reads the index only): the llm/images steps' view."""
    assert inp.reviews is not None
    raw = _Cursor(inp.reviews(columns)) if columns else None
    for lo, chunk in inp.index.chunks():
        train = sp.codes(chunk) == split.TRAIN
        ts = chunk["timestamp"].to_numpy()
        yield RowChunk(lo, chunk["user"].to_numpy(), chunk["item"].to_numpy(), ts, train,
                       plan.profile_slot(ts, chunk["fold_hash"].to_numpy(), train),
                       raw.take(chunk.num_rows) if raw is not None else None)  # fmt: skip


@dataclass
class Split:
    """How a row's split and time block follow from its own values."""

    random: bool
    seed: int
    cuts: list[int]  # the two cut values of the pair hash (random) or timestamp (temporal)
    block_cuts: list[int]  # the B - 1 timestamps between profile time blocks (temporal)

    def codes(self, chunk: pa.Table) -> np.ndarray:
        if self.random:
            values = split.pair_keys(chunk["user"].to_numpy(), chunk["item"].to_numpy(), self.seed)
        else:
            values = chunk["timestamp"].to_numpy()
        c1, c2 = (np.array(c, dtype=values.dtype) for c in self.cuts)
        return np.where(
            values < c1, split.TRAIN, np.where(values < c2, split.VAL, split.TEST)
        ).astype(np.int8)


def cut_split(cfg: FeaturesConfig, index: RowIndex, fractions: list[float]) -> Split:
    """The split's cut-offs, exactly `split.cut_at_quantiles`' and `profiles.time_blocks`'."""
    n = index.rows
    ranks = [
        min(int(round(fractions[0] * n)), n - 1),
        min(int(round((fractions[0] + fractions[1]) * n)), n - 1),
    ]
    blocks = cfg.profile_blocks if cfg.split == "temporal" else 1
    block_ranks = [min(round(j * n / blocks), n - 1) for j in range(1, blocks)]
    if cfg.split == "random":

        def keys() -> Iterator[np.ndarray]:
            for _, c in index.chunks(["user", "item"]):
                yield split.pair_keys(c["user"].to_numpy(), c["item"].to_numpy(), cfg.seed)

        return Split(True, cfg.seed, values_at_ranks(keys, n, ranks, signed=False), [])

    def stamps() -> Iterator[np.ndarray]:
        for _, c in index.chunks(["timestamp"]):
            yield c["timestamp"].to_numpy()

    got = values_at_ranks(stamps, n, ranks + block_ranks, signed=True)
    return Split(False, cfg.seed, got[:2], got[2:])


@dataclass
class Tallies:
    """Pass 2's per-entity counts and per-split totals."""

    user_train: np.ndarray  # int64 [U] training rows
    item_train: np.ndarray
    item_train_pos: np.ndarray
    rows: np.ndarray = field(default_factory=lambda: np.zeros(3, np.int64))  # per split
    positives: np.ndarray = field(default_factory=lambda: np.zeros(3, np.int64))
    rating: np.ndarray = field(default_factory=lambda: np.zeros(3))  # train n, sum, sum of squares
    item_blocks: stats.ItemBlockSums | None = None  # rating_bias: the readable rows' item sums

    def add(self, chunk: pa.Table, codes: np.ndarray, t: float) -> None:
        user, item = chunk["user"].to_numpy(), chunk["item"].to_numpy()
        rating = chunk["rating"].to_numpy()
        train, label = codes == split.TRAIN, rating >= t
        self.user_train += np.bincount(user[train], minlength=len(self.user_train))
        self.item_train += np.bincount(item[train], minlength=len(self.item_train))
        self.item_train_pos += np.bincount(item[train & label], minlength=len(self.item_train))
        self.rows += np.bincount(codes, minlength=3)
        self.positives += np.bincount(codes[label], minlength=3)
        r = rating[train]
        self.rating += [len(r), r.sum(), np.dot(r, r)]

    def train_rating(self) -> dict[str, float]:
        return train_rating(*self.rating)


def train_rating(n: float, total: float, squares: float) -> dict[str, float]:
    """Mean and std of the training ratings from their count, sum and sum of squares
    (the trainer's rating head scales by them)."""
    if not n:
        return {"mean": 0.0, "std": 1.0}
    mean = total / n
    return {"mean": float(mean), "std": float(np.sqrt(max(squares / n - mean * mean, 0.0)))}


@dataclass
class Buckets:
    user_edges: np.ndarray
    users: Spill
    item_edges: np.ndarray | None
    items: Spill | None


def spill_rows(
    cfg: FeaturesConfig, inp: Input, sp: Split, work: Path, by_item: bool
) -> tuple[Tallies, Buckets]:
    """Pass 2: tallies, and each row to its user bucket (and item bucket when `by_item`)."""
    index = inp.index
    tallies = Tallies(
        np.zeros(len(inp.users), np.int64), np.zeros(len(inp.items), np.int64),
        np.zeros(len(inp.items), np.int64),
    )  # fmt: skip
    if cfg.rating_bias:
        tallies.item_blocks = stats.ItemBlockSums(len(inp.items), np.asarray(sp.block_cuts))
    frozen = cfg.temporal_history == "frozen"
    u_edges = owner_ranges(index.user_rows, BUCKET_ROWS)
    i_edges = owner_ranges(index.item_rows, BUCKET_ROWS) if by_item else None
    b = Buckets(u_edges, Spill(work / "users", len(u_edges) - 1), i_edges,
                Spill(work / "items", len(i_edges) - 1) if i_edges is not None else None)  # fmt: skip
    for seq, chunk in index.chunks():
        codes = sp.codes(chunk)
        tallies.add(chunk, codes, cfg.positive_min_rating)
        if tallies.item_blocks is not None:
            keep = codes == split.TRAIN if frozen else np.ones(len(codes), bool)
            tallies.item_blocks.add(chunk["item"].to_numpy()[keep], chunk["timestamp"].to_numpy()[keep],
                                    chunk["rating"].to_numpy()[keep])  # fmt: skip
        rows = pa.Table.from_arrays(
            [pa.array(np.arange(seq, seq + chunk.num_rows)), chunk["user"], chunk["item"], chunk["timestamp"],
             chunk["rating"], pa.array(codes), chunk["fold_hash"]], schema=SPILL_SCHEMA,
        )  # fmt: skip
        b.users.add(rows, bucket_of(chunk["user"].to_numpy(), u_edges))
        if b.items is not None and i_edges is not None:
            b.items.add(rows, bucket_of(chunk["item"].to_numpy(), i_edges))
    b.users.close()
    if b.items is not None:
        b.items.close()
    if not tallies.rows[split.TRAIN]:
        raise DataError(
            f"{Path(cfg.raw_dir) / ('interactions.parquet' if cfg.source == 'raw' else '')}: "
            f"the {cfg.split} split leaves no training rows out of {index.rows}; check "
            "split_fractions and the timestamps"
        )
    return tallies, b


def _bucket(spill: Spill, b: int) -> pa.Table:
    table = spill.read(b)
    return table if table is not None else SPILL_SCHEMA.empty_table()


def _user_task(args: tuple) -> dict[str, int]:
    spill, b, lo, hi, plan, vecs, names, out, prof = args
    return user_job(_bucket(spill, b), lo, hi, plan, vecs, names, out, prof)


def _item_task(args: tuple) -> None:
    spill, b, plan, out = args
    item_job(_bucket(spill, b), plan, out)


@dataclass
class OwnerOutputs:
    user_files: list[Path]  # per user bucket: the file prefix of user_job's outputs
    item_files: list[Path]
    repeated_pairs: dict[str, int]


def owner_jobs(
    profiles: Path,
    bk: Buckets,
    plan: OwnerPlan,
    vecs: np.ndarray,
    user_names: pa.Array,
    work: Path,
    workers: Workers,
) -> OwnerOutputs:
    """Every user bucket's and item bucket's job, in worker processes when there are some;
    user bucket b writes `profiles`/part-b.parquet."""
    if plan.keyed:
        profiles.mkdir(parents=True, exist_ok=True)
    u = bk.user_edges
    user_args = [(bk.users, b, int(u[b]), int(u[b + 1]), plan, vecs,
                  user_names.slice(int(u[b]), int(u[b + 1] - u[b])).to_pylist(), work / f"u{b:05d}", profiles / f"part-{b:05d}.parquet")
                 for b in range(len(u) - 1)]  # fmt: skip
    item_args = []
    if bk.items is not None and bk.item_edges is not None:
        item_args = [(bk.items, b, plan, work / f"i{b:05d}") for b in range(len(bk.item_edges) - 1)]
    pairs = workers.map(_user_task, user_args)
    workers.map(_item_task, item_args)
    total = {
        "pairs": sum(p["pairs"] for p in pairs),
        "extra_rows": sum(p["extra_rows"] for p in pairs),
    }
    return OwnerOutputs([a[-2] for a in user_args], [a[-1] for a in item_args], total)


def dense_names(enc: Encoded, plan: OwnerPlan) -> list[str]:
    """The dense columns in order: per-entity values, prices, then rating statistics."""
    bias = plan.item_block_means is not None
    got = stats.stat_features(plan.stats_recent, bias) if plan.stats_folds is not None else ()
    return list(enc.dense) + list(got)


def no_owner_columns(plan: OwnerPlan) -> bool:
    return plan.stats_folds is None and plan.bag_folds is None


def meta_rows(t: Tallies) -> dict[str, Any]:
    return {
        "rows": {s: int(t.rows[c]) for c, s in enumerate(split.SPLITS)},
        "positives": {s: int(t.positives[c]) for c, s in enumerate(split.SPLITS)},
    }


def train_indices(counts: np.ndarray) -> np.ndarray:
    return np.flatnonzero(counts > 0).astype(np.int64)


def encode_entities(cfg: FeaturesConfig, inp: Input, t: Tallies) -> examples.EntitySparse:
    return examples.entity_sparse(inp.users, inp.items, train_indices(t.user_train),
                                  train_indices(t.item_train), cfg.zip_prefix_len, cfg.max_categories)  # fmt: skip


@dataclass
class Encoded:
    """Per-owner model inputs; a row takes its owners' values (`columns`)."""

    sparse: examples.EntitySparse
    # name -> (owner: user | item | a key column such as item_text_key, float32 values)
    dense: dict[str, tuple[str, np.ndarray]]
    dense_stats: dict[str, dict[str, float]]
    price_info: dict[str, Any]
    key_categories: pa.Array | None = None  # the LLM's types per item key, replacing `categories`

    def columns(self, chunk: pa.Table, keys: dict[str, np.ndarray]) -> dict[str, np.ndarray | pa.Array]:
        """A chunk's sparse and dense columns; `keys`: its review-content key columns."""
        user, item = chunk["user"].to_numpy(), chunk["item"].to_numpy()
        out = self.sparse.rows(user, item)
        if self.key_categories is not None:
            out["categories"] = self.key_categories.take(pa.array(keys[ITEM_KEY]))
        owner = {"user": user, "item": item, **keys}
        return out | {name: values[owner[kind]] for name, (kind, values) in self.dense.items()}


ITEM_KEY = key_column("item_text")  # the LLM's price and types are per item summary key


def encode(cfg: FeaturesConfig, inp: Input, t: Tallies, review: ReviewContent) -> Encoded:
    """Vocabularies, standardised dense values and prices, all per owner (an entity, or
    an item summary key for the LLM's price and types)."""
    sparse = encode_entities(cfg, inp, t)
    weights = {"user": t.user_train, "item": t.item_train}
    dense: dict[str, tuple[str, np.ndarray]] = {}
    dense_stats: dict[str, dict[str, float]] = {}
    for name, (kind, raw) in examples.dense_inputs(inp.users, inp.items).items():
        z, mean, std = standardize(raw, weights[kind])
        dense[name], dense_stats[name] = (kind, z), {"mean": mean, "std": std}
    key_categories = None
    if review.key_price is not None:
        key_train, key_rows = review.price_weights()
        price, info = price_features(review.key_price, "llm", key_train)
        # rows with a price, as when the price was per row
        info["items_with_price"] = int(key_rows[~np.isnan(review.key_price)].sum())
        kind = ITEM_KEY
    else:
        price, info = price_features(*item_prices(inp.items), t.item_train)
        kind = "item"
    dense |= {name: (kind, v) for name, v in price.items()}
    if price:
        dense_stats["price"] = {"mean": info["mean"], "std": info["std"]}
    if review.key_types is not None:
        key_categories, sparse.vocabs["categories"], sparse.truncated = review.categories(
            cfg.max_categories
        )
    return Encoded(sparse, dense, dense_stats, info, key_categories)


@dataclass
class Written:
    """What pass 3 counted on the way (for `_meta.json`)."""

    oov: dict[str, dict[str, int]] = field(default_factory=dict)
    bag_len: dict[str, np.ndarray] = field(default_factory=dict)  # name -> per-split sums
    bag_max: dict[str, int] = field(default_factory=dict)
    cat_max: int = 0

    def count(
        self, cols: dict[str, Any], sparse: list[str], bags: list[str], codes: np.ndarray
    ) -> None:
        for name, per_split in examples.oov_counts({n: cols[n] for n in sparse}, codes).items():
            mine = self.oov.setdefault(name, dict.fromkeys(split.SPLITS, 0))
            self.oov[name] = {s: mine[s] + per_split[s] for s in split.SPLITS}
        for name in bags:
            lengths = np.asarray(pc.list_value_length(cols[name]))
            self.bag_len[name] = self.bag_len.get(name, np.zeros(3)) + np.bincount(
                codes, weights=lengths, minlength=3
            )
            self.bag_max[name] = max(self.bag_max.get(name, 0), int(lengths.max(initial=0)))
        cats = np.asarray(pc.list_value_length(cols["categories"]).fill_null(0))
        self.cat_max = max(self.cat_max, int(cats.max(initial=0)))


def _joins(outs: OwnerOutputs, plan: OwnerPlan) -> list[SeqJoin]:
    if no_owner_columns(plan):
        return []
    return [
        SeqJoin([Path(f"{p}-rows.parquet") for p in files])
        for files in (outs.user_files, outs.item_files)
    ]


def _owned(join: SeqJoin, lo: int, hi: int) -> dict[str, Any]:
    table = join.take(lo, hi)
    return {
        name: col.combine_chunks() if pa.types.is_list(col.type) else col.to_numpy()
        for name, col in zip(table.column_names, table.columns, strict=True)
    }


def row_columns(
    chunk: pa.Table, slot: np.ndarray, plan: OwnerPlan, enc: Encoded, keys: dict[str, np.ndarray]
) -> dict[str, Any]:
    """A chunk's example columns that need no bucket job (`slot`: each row's profile slot,
    `keys`: its review content keys)."""
    user, ts = chunk["user"].to_numpy(), chunk["timestamp"].to_numpy()
    rating = chunk["rating"].to_numpy()
    cols: dict[str, Any] = {
        "user_id": user,
        "item_id": chunk["item"].to_numpy(),
        "label": (rating >= plan.positive_min_rating).astype(np.float32),
        "rating": rating.astype(np.float32),
        "timestamp": ts,
    }
    if plan.keyed:
        cols[PROFILE_KEY] = user * plan.profile_slots + slot
    return cols | enc.columns(chunk, keys)


def write_rows(
    inp: Input,
    sp: Split,
    plan: OwnerPlan,
    enc: Encoded,
    outs: OwnerOutputs,
    review: ReviewContent,
    stage: Path,
    dim: int,
) -> Written:
    """Pass 3: every split's example parts, rows in input order, chunk by chunk."""
    bags = list(history.HISTORY_FEATURES) if plan.bag_folds is not None else []
    sparse = ["categories", *enc.sparse.user]
    joins, written = _joins(outs, plan), Written()
    writers: dict[str, ExamplesWriter] = {}
    for lo, chunk in inp.index.chunks():
        hi, codes = lo + chunk.num_rows, sp.codes(chunk)
        user, ts = chunk["user"].to_numpy(), chunk["timestamp"].to_numpy()
        slot = plan.profile_slot(ts, chunk["fold_hash"].to_numpy(), codes == split.TRAIN)
        keys = review.row_keys(user, chunk["item"].to_numpy(), lo, slot)
        cols = row_columns(chunk, slot, plan, enc, keys)
        for join in joins:
            cols |= _owned(join, lo, hi)
        tables = examples.example_tables(codes, cols, dim, dense_names(enc, plan), bags, plan.keyed)
        if keys:
            tables = add_row_columns(tables, codes, keys)
        for name, table in tables.items():
            writers.setdefault(name, ExamplesWriter(stage, name, table.schema)).write(table)
        written.count(cols, sparse, bags, codes)
    for writer in writers.values():
        writer.close()
    return written


def concat_parquet(files: list[Path], out: Path, id_col: str, columns: Any = None) -> None:
    """Row groups of `files`, in order, into `out` (`columns(i, table)` may add columns to
    the i-th file's tables); holds one row group at a time."""
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    for i, path in enumerate(files):
        pf = pq.ParquetFile(path)
        for g in range(pf.num_row_groups):
            table = pf.read_row_group(g)
            table = columns(i, table) if columns is not None else table
            writer = writer or vector_writer(out, table.schema, id_col)
            writer.write_table(table)
    if writer is not None:
        writer.close()
