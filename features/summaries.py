"""Out-of-fold review extraction: summaries, price and types that never read the row's own review.

An LLM summary is not a sum, so it cannot leave one review out the way a mean can.
Training reviews are therefore cut into K folds by a hash of (seed, review id), and

    R(e, k) = entity e's training reviews outside fold k      (k < K)
    R(e, K) = all of entity e's training reviews

Under a temporal split the folds are K time blocks of the training reviews instead
and R(e, k) holds blocks < k only, so a training row reads strictly earlier reviews
(forward chaining); val/test rows come after every training review anyway.

A training row in fold k reads R(user, k) and R(item, k); a val/test row reads
R(user, K) and R(item, K); the entity tables hold R(e, K).  A row's own review is in
its own fold, so nothing it says (text or rating) reaches its features, and val/test
reviews reach nothing at all.  The fold of a review depends only on its id (temporal:
on its timestamp), never on its text or rating.

What a row reads is therefore one of K + 1 slots of its entity: the results are
tables keyed by (entity, slot), key = entity * (K + 1) + slot, and each example row
holds only its keys (features/content.py), never a vector.

Each distinct review set is sent to the provider once (features/llm.py: the
OpenAI-compatible client or the offline one), and each distinct summary is embedded
once with MiniLM (features/text.py).  Users get only the summary prompt; items get
summary, price and types (the paper's prompts are about a restaurant).

In the build nothing here is per row: `spill_reviews` passes over the rows once,
writing each row's slot to a row-aligned file and each training review (fold, text) to
its user's and its item's partition (contiguous entity ranges of about
`PARTITION_ROWS` training reviews); `summarize` then builds one partition's review
sets, asks the provider, and keeps per key only the summary's place in an embedding
run (features/embed_runs.py), whose vectors go to the keyed table partition by
partition.  An entity is never split, so one entity's reviews are held at once.

Shapes: N = interaction rows, E = entities, S = distinct review sets, D = 384.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from features.content_rows import Chunks, ContentInputs, RowSlots
from features.dense import PRICE_CATEGORY_TIER
from features.embed_runs import EmbedRuns
from features.keyed import KeyedWriter
from features.llm import ALL_KINDS, EntityReviews, PromptKind, Provider
from features.order_stats import values_at_ranks
from features.spill import Spill, bucket_of, owner_ranges


def review_folds(review_ids: Sequence[str], k: int, seed: int) -> np.ndarray:
    """int64 [N] fold of each review: sha256(seed, review id) mod k (no other input)."""
    return np.asarray(
        [
            int.from_bytes(hashlib.sha256(f"{seed}\0{r}".encode()).digest()[:8], "little") % k
            for r in review_ids
        ],
        dtype=np.int64,
    )


def time_blocks(timestamps: np.ndarray, train: np.ndarray, k: int) -> np.ndarray:
    """int64 [N] block 0..k-1 of each row by time: k near-equal shares of the training rows.

    Cut-offs are training timestamps, so equal timestamps share a block and every
    review in a lower block is strictly earlier than every review in a higher one.
    The temporal split's folds (`out_of_fold_sets(..., earlier=True)`).
    """
    ordered = np.sort(timestamps[train])
    if not len(ordered):
        return np.zeros(len(timestamps), dtype=np.int64)
    cuts = ordered[[min(round(j * len(ordered) / k), len(ordered) - 1) for j in range(1, k)]]
    return np.searchsorted(cuts, timestamps, side="right").astype(np.int64)


@dataclass
class ReviewSets:
    """The distinct review sets of one entity kind and who reads which.

    sets: [S] (entity, sorted row indices of the reviews in the set).
    row_set: int64 [N] the set each row reads (its entity's, out of the row's fold).
    entity_set: int64 [E] each entity's all-training set.
    key_set: int64 [E * (K + 1)] the set of (entity e, slot s) at key e * (K + 1) + s,
        -1 where no row reads that slot (features/content.py keys rows by it).
    """

    sets: list[tuple[int, tuple[int, ...]]]
    row_set: np.ndarray
    entity_set: np.ndarray
    key_set: np.ndarray


def out_of_fold_sets(
    owner: np.ndarray,
    train: np.ndarray,
    folds: np.ndarray,
    k: int,
    n_entities: int,
    earlier: bool = False,
) -> ReviewSets:
    """R(e, k) for the (entity, fold) pairs some row or entity reads (pure).

    Args:
        owner: int64 [N] the entity of each row (its user, or its item).
        train: bool [N]; folds: int64 [N] (only training rows' folds matter).
        k: K.
        n_entities: E.
        earlier: folds are `time_blocks` and a training row in block k reads blocks
            < k only (temporal split: strictly earlier reviews), not every other fold.
    """
    n = len(owner)
    folds = np.asarray(folds, dtype=np.int64)
    # A training row reads (e, its fold); that set always differs from (e, K), since
    # the row itself is in it.  Val/test rows and the entity tables read (e, K).
    key = np.concatenate(
        [
            np.asarray(owner, dtype=np.int64) * (k + 1) + np.where(train, folds, k),
            np.arange(n_entities, dtype=np.int64) * (k + 1) + k,
        ]
    )
    uniq, inverse = np.unique(key, return_inverse=True)
    # Training rows grouped by entity, in row order (a stable sort keeps it).
    tr = np.nonzero(train)[0]
    tr = tr[np.argsort(owner[tr], kind="stable")]
    bounds = np.searchsorted(owner[tr], np.arange(n_entities + 1))
    sets: list[tuple[int, tuple[int, ...]]] = []
    for u in uniq.tolist():
        e, fold = divmod(u, k + 1)
        rows = tr[bounds[e] : bounds[e + 1]]
        if fold < k:
            rows = rows[folds[rows] < fold] if earlier else rows[folds[rows] != fold]
        sets.append((e, tuple(rows.tolist())))
    # Blocks without reviews of e give equal sets: ask about each distinct one once.
    first: dict[tuple[int, tuple[int, ...]], int] = {}
    remap = np.asarray([first.setdefault(st, len(first)) for st in sets], dtype=np.int64)
    inverse = remap[inverse]
    key_set = np.full(n_entities * (k + 1), -1, dtype=np.int64)
    key_set[uniq] = remap
    return ReviewSets(
        list(first), inverse[:n].astype(np.int64), inverse[n:].astype(np.int64), key_set
    )


def row_slots(train: np.ndarray, folds: np.ndarray, k: int) -> np.ndarray:
    """int8 [n] the slot each row reads: its fold (training rows), else K."""
    return np.where(train, folds, k).astype(np.int8)


PARTITION_ROWS = 1 << 18  # training reviews per entity partition: what one partition holds
# (its texts, as Python strings, and its review sets: ~0.3 GB at 1 KB review texts)
REVIEW_SCHEMA = pa.schema([("owner", pa.int64()), ("fold", pa.int8()), ("text", pa.string())])
REVIEW_COLUMNS = ["review_id", "user", "item", "timestamp", "text"]


@dataclass
class ReviewRows:
    """The llm step's pass over the rows: training reviews spilled per entity partition
    (rows of one partition in row order), and per-key row counts.  S = K + 1 slots."""

    edges: dict[str, np.ndarray]  # kind -> int64 [P + 1] entity partition edges
    spills: dict[str, Spill]  # kind -> (owner, fold, text) of its training reviews
    key_rows: np.ndarray  # int64 [I * S] rows reading each item key
    key_train: np.ndarray  # int64 [I * S] training rows among them
    user_rows: np.ndarray  # int64 [U * S] rows reading each user key


def _review_ids(raw: pa.Table) -> list[str]:
    """The review id, or user|item|time where a table has none: never the text or the
    rating, which may change without moving a review's fold."""
    if "review_id" in raw.column_names:
        return raw["review_id"].to_pylist()
    return [f"{u}|{i}|{t}" for u, i, t in zip(raw["user"].to_pylist(), raw["item"].to_pylist(),
                                             raw["timestamp"].to_pylist())]  # fmt: skip


def block_cuts(chunks: Chunks, n_train: int, k: int) -> np.ndarray:
    """`time_blocks`' k - 1 cut-offs, from a streamed selection over the training stamps."""

    def stamps() -> Iterator[np.ndarray]:
        for c in chunks([]):
            yield c.ts[c.train]

    ranks = [min(round(j * n_train / k), n_train - 1) for j in range(1, k)]
    return np.asarray(values_at_ranks(stamps, n_train, ranks, signed=True), np.int64)


def spill_reviews(chunks: Chunks, x: ContentInputs, k: int, row_slot: RowSlots) -> ReviewRows:
    """One pass over the rows: each row's slot to `row_slot`, per-key counts, and each
    training review (its fold and text) to its user's and its item's partition."""
    s = k + 1
    edges = {"user": owner_ranges(x.user_train, PARTITION_ROWS),
             "item": owner_ranges(x.item_train, PARTITION_ROWS)}  # fmt: skip
    spills = {e: Spill(x.work / f"reviews-{e}", len(edges[e]) - 1) for e in edges}
    cuts = block_cuts(chunks, x.n_train, k) if x.temporal else None
    rr = ReviewRows(edges, spills, np.zeros(len(x.item_train) * s, np.int64),
                    np.zeros(len(x.item_train) * s, np.int64), np.zeros(len(x.user_train) * s, np.int64))  # fmt: skip
    for c in chunks(REVIEW_COLUMNS):
        assert c.raw is not None
        if cuts is not None:
            folds = np.searchsorted(cuts, c.ts, side="right").astype(np.int64)
        else:
            folds = review_folds(_review_ids(c.raw), k, x.seed)
        slot = row_slots(c.train, folds, k)
        row_slot.write(slot)
        item_keys = c.item * s + slot
        rr.key_rows += np.bincount(item_keys, minlength=len(rr.key_rows))
        rr.key_train += np.bincount(item_keys[c.train], minlength=len(rr.key_rows))
        rr.user_rows += np.bincount(c.user * s + slot, minlength=len(rr.user_rows))
        tr = np.flatnonzero(c.train)
        text = (c.raw["text"].take(tr).combine_chunks().cast(pa.string())
                if "text" in c.raw.column_names else pa.nulls(len(tr), pa.string()))  # fmt: skip
        for e, owner in (("user", c.user[tr]), ("item", c.item[tr])):
            table = pa.Table.from_arrays([pa.array(owner), pa.array(folds[tr].astype(np.int8)), text],
                                         schema=REVIEW_SCHEMA)  # fmt: skip
            spills[e].add(table, bucket_of(owner, edges[e]))
    row_slot.close()
    for spill in spills.values():
        spill.close()
    return rr


@dataclass
class Summarized:
    """One entity kind's summaries, written as its keyed table; what is left per key."""

    has_summary: np.ndarray  # bool [E * S]
    n_sets: int  # review sets with at least one text: one prompt per kind each
    key_price: np.ndarray | None = None  # float64 [I * S] (items)
    key_types: pa.ListArray | None = None  # list<string> [I * S] (items)


def summarize(
    provider: Provider,
    kind: Literal["user", "item"],
    names: pa.Array,
    rows: ReviewRows,
    x: ContentInputs,
    k: int,
    path: Path,
    price_tier: Sequence[int | None] | None = None,
    categories: Sequence[Sequence[str] | None] | None = None,
) -> Summarized:
    """Ask the provider about every distinct out-of-fold review set, one entity partition
    at a time, embed the summaries in one sorted pass, and write the keyed table `path`.

    Args:
        provider: features/llm.py provider.
        kind: "user" (summary only) or "item" (summary, price, types).
        names: [E] raw ids (for messages).
        price_tier, categories: [E] metadata the offline provider falls back to.
    """
    s, edges = k + 1, rows.edges[kind]
    runs = EmbedRuns(x.work / f"summaries-{kind}", x.encoder, x.dim)
    key_local = np.full(len(names) * s, -1, np.int64)  # the key's summary in its partition's run
    price, types, n_sets = [], [], 0
    for p in range(len(edges) - 1):
        lo, hi = int(edges[p]), int(edges[p + 1])
        table = rows.spills[kind].read(p)
        table = REVIEW_SCHEMA.empty_table() if table is None else table
        rs = out_of_fold_sets(table["owner"].to_numpy() - lo, np.ones(table.num_rows, bool),
                              table["fold"].to_numpy(), k, hi - lo, x.temporal)  # fmt: skip
        texts = table["text"].to_pylist()
        part_names = names.slice(lo, hi - lo).to_pylist()
        requests = [
            EntityReviews(
                entity=str(part_names[e]),
                kind=kind,
                texts=tuple(t.strip() for t in (texts[r] for r in set_rows) if t and t.strip()),
                price_tier=price_tier[lo + e] if price_tier is not None else None,
                categories=tuple((categories[lo + e] or ()) if categories is not None else ()),
            )
            for e, set_rows in rs.sets
        ]
        kinds: tuple[PromptKind, ...] = ("summary",) if kind == "user" else ALL_KINDS
        answers = provider.extract(requests, kinds) if requests else []
        said = [a.summary.strip() for a in answers]
        _, local = runs.add([t for t in said if t])
        set_local = np.full(len(said) + 1, -1, np.int64)  # (the -1 appended: an unread key)
        set_local[[j for j, t in enumerate(said) if t]] = local
        key_local[lo * s : hi * s] = set_local[rs.key_set]
        n_sets += sum(1 for r in requests if r.texts)  # the sets prompted (some have no text)
        if kind == "item":
            tier = [PRICE_CATEGORY_TIER.get(a.price, np.nan) for a in answers] + [np.nan]
            price.append(np.asarray(tier, np.float64)[rs.key_set])
            types.append(pa.array([list(answers[j].types) if j >= 0 else [] for j in rs.key_set.tolist()],
                                  pa.list_(pa.string())))  # fmt: skip
    runs.embed()
    writer = KeyedWriter(path, f"{kind}_text", x.dim, len(key_local))
    for p in range(len(edges) - 1):
        lo, hi = int(edges[p]) * s, int(edges[p + 1]) * s
        keys = np.flatnonzero(key_local[lo:hi] >= 0)
        writer.add(keys + lo, runs.vectors(p, key_local[lo + keys]))
    writer.close()
    if kind == "user":
        return Summarized(key_local >= 0, n_sets)
    return Summarized(key_local >= 0, n_sets, np.concatenate(price),
                      pa.concat_arrays(types) if types else pa.array([], pa.list_(pa.string())))  # fmt: skip


def usage_meta(provider: Provider, k: int, user_sets: int, item_sets: int) -> dict[str, Any]:
    """The `llm` block of `_meta.json`: provider, model, folds, prompt counts, tokens, cost."""
    meta: dict[str, Any] = {
        "provider": provider.name,
        "model": getattr(provider, "model", None),
        "folds": k,
        "review_sets": {"user": user_sets, "item": item_sets},
        "usage": provider.usage.to_meta(),
    }
    return meta
