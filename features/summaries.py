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

Shapes: N = interaction rows, E = entities, S = distinct review sets, D = 384.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from features.llm import ALL_KINDS, EntityReviews, PromptKind, Provider


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


@dataclass
class EntityExtraction:
    """One entity kind's extraction per (entity, slot) key (slot K: all training reviews).

    The key of (entity e, slot s) is e * (K + 1) + s; a training row in fold f reads
    slot f, a val/test row slot K (`row_slots`).  Nothing here is per row.
    """

    key_summary: np.ndarray  # int64 [E * (K + 1)] row of `vecs` of each key, -1 = no summary
    vecs: np.ndarray  # float32 [V, D] the distinct summaries' vectors
    key_set: np.ndarray  # int64 [E * (K + 1)] review set of each key, -1 = read by no row
    set_price: list[str]  # [S] "overpriced" | "fair" | "cheap" | "none"
    set_types: list[list[str]]  # [S]
    n_sets: int  # review sets with at least one text: one prompt per kind each

    def entity_vectors(self, slots: int) -> tuple[np.ndarray, np.ndarray]:
        """(float32 [E, D], bool [E]): each entity's all-training summary (slot K)."""
        return self.key_vectors(self.key_summary[slots - 1 :: slots])

    def key_vectors(self, summary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(float32 [n, D], bool [n]) of summary indices (-1 -> zero, False)."""
        has = summary >= 0
        out = np.zeros((summary.size, self.vecs.shape[1]), np.float32)
        out[has] = self.vecs[summary[has]]
        return out, has


def row_slots(train: np.ndarray, folds: np.ndarray, k: int) -> np.ndarray:
    """int8 [n] the slot each row reads: its fold (training rows), else K."""
    return np.where(train, folds, k).astype(np.int8)


def extract_out_of_fold(
    provider: Provider,
    kind: Literal["user", "item"],
    entity_names: Sequence[str],
    owner: np.ndarray,
    texts: Sequence[str | None],
    train: np.ndarray,
    folds: np.ndarray,
    k: int,
    embed: Callable[[list[str]], np.ndarray],
    dim: int,
    price_tier: Sequence[int | None] | None = None,
    categories: Sequence[Sequence[str] | None] | None = None,
    earlier: bool = False,
) -> EntityExtraction:
    """Ask the provider about every distinct out-of-fold review set, embed the summaries.

    Args:
        provider: features/llm.py provider.
        kind: "user" (summary only) or "item" (summary, price, types).
        entity_names: [E] raw ids (for messages).
        owner: int64 [N] the row's user or item.
        texts: [N] review texts (None or blank = no text).
        train, folds, k: see `out_of_fold_sets`.
        embed: texts -> float16-exact vectors [len, D].
        dim: D.
        price_tier, categories: [E] metadata the offline provider falls back to.
        earlier: see `out_of_fold_sets` (temporal split).
    """
    rs = out_of_fold_sets(owner, train, folds, k, len(entity_names), earlier)
    requests = []
    for e, rows in rs.sets:
        body = tuple(t.strip() for t in (texts[r] for r in rows) if t and t.strip())
        requests.append(
            EntityReviews(
                entity=str(entity_names[e]),
                kind=kind,
                texts=body,
                price_tier=price_tier[e] if price_tier is not None else None,
                categories=tuple((categories[e] or ()) if categories is not None else ()),
            )
        )
    kinds: tuple[PromptKind, ...] = ("summary",) if kind == "user" else ALL_KINDS
    answers = provider.extract(requests, kinds) if requests else []
    summaries = [a.summary.strip() for a in answers]
    distinct = sorted({s for s in summaries if s})
    table = embed(distinct) if distinct else np.zeros((0, dim), np.float32)
    at = {s: i for i, s in enumerate(distinct)}
    set_summary = np.asarray([at[s] if s else -1 for s in summaries] + [-1], dtype=np.int64)
    return EntityExtraction(
        key_summary=set_summary[rs.key_set],  # (index -1, an unread key, is the -1 appended)
        vecs=np.asarray(table, np.float32).reshape(-1, dim),
        key_set=rs.key_set,
        set_price=[a.price for a in answers],
        set_types=[list(a.types) for a in answers],
        n_sets=sum(1 for r in requests if r.texts),  # the sets that are prompted (some have no text)
    )


def usage_meta(
    provider: Provider, k: int, user: EntityExtraction, item: EntityExtraction
) -> dict[str, Any]:
    """The `llm` block of `_meta.json`: provider, model, folds, prompt counts, tokens, cost."""
    meta: dict[str, Any] = {
        "provider": provider.name,
        "model": getattr(provider, "model", None),
        "folds": k,
        "review_sets": {"user": user.n_sets, "item": item.n_sets},
        "usage": provider.usage.to_meta(),
    }
    return meta
