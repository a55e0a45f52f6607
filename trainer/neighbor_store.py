"""SWING top-K neighbour lists in read-only disk stores, read per batch of anchors.

Shape legend: n = anchors (items or users), E = pairs (neighbours over all anchors),
B = anchors asked for at once.

InfoNCE samples each anchor's positive from its SWING list (p ~ score) and, with
positive-set masking, reads the whole list. A rank never holds the lists: each kind is
one file, `similarity/neighbors/{item_item,user_user}.csr`, a CSR over anchors:

    [0, 4096)                          header: JSON (format, similarity fingerprint, name, n, pairs E, source digest)
    [4096, 4096 + (n + 1) * 8)         offsets: int64, anchor a's pairs are [offsets[a], offsets[a + 1])
    then E records of 16 bytes         (neighbour id int64, cumulative probability float64)

The cumulative probability of a pair is anchor + its within-anchor cumulative score
share, so the values rise over the whole file and one `searchsorted` draws every
anchor's positive (`NeighborStore.sample`). Written once per similarity artifact from
its part files, one part at a time (bounded), by the first process that needs it,
under the same lock, temp file, rename and header checks as the vector stores
(trainer/vector_store.py); it lives inside the artifact it is derived from. A batch
reads the offsets and pairs of its unique anchors, one compiled `pread` per range
(`vector_store.scatter_read`). The positive sampler's marginal (`marginal`, for logQ) streams the
file once, in bounded chunks of anchors. Every value equals what the in-memory lists
gave: the same float64 operations in the same order (the global cumulative sum carried
from part to part, the per-target sums accumulated in pair order).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dlrrec.config import DataError
from trainer.vector_store import (
    HEADER_BYTES,
    open_checked,
    read_at,
    scatter_read,
    source_digest,
    write_atomic,
    write_once,
)

FORMAT = "dlrrec-neighbors/1"
FOLDER = "neighbors"  # under similarity/
PAIR = np.dtype([("id", "<i8"), ("cum", "<f8")])
CHUNK_ANCHORS = 65536  # anchors per chunk of the marginal's pass


class Uniforms(Protocol):
    """A source of uniforms in [0, 1): np.random.Generator, or trainer.data.LaneRng."""

    def random(self, shape: tuple[int, ...], /) -> np.ndarray: ...


def read_parts(folder: Path, n: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(anchor, neighbour int64, score float64) of each SWING part file in anchor order,
    each sorted by (anchor, rank).

    Raises:
        DataError: no part files, ids outside [0, n), or parts whose anchors overlap.
    """
    files = sorted(folder.glob("part-*.parquet"))
    if not files:
        raise DataError(f"{folder}: no part-*.parquet files; run `dlrrec similarity swing` first")
    first = {}
    for f in files:  # the parts in anchor order (SWING writes one anchor range per part)
        anchors = pq.read_table(f, columns=["anchor"]).column(0)
        first[f] = pc.min(anchors).as_py() if len(anchors) else -1
    last = -1
    for f in sorted(files, key=lambda f: first[f]):
        t = pq.read_table(f, columns=["anchor", "neighbor", "score", "rank"])
        if not t.num_rows:
            continue
        anchor = t.column("anchor").to_numpy()
        order = np.lexsort((t.column("rank").to_numpy(), anchor))
        anchor = anchor[order].astype(np.int64)
        nb = t.column("neighbor").to_numpy()[order].astype(np.int64)
        score = t.column("score").to_numpy()[order].astype(np.float64)
        if anchor.min() < 0 or anchor.max() >= n or nb.min() < 0 or nb.max() >= n:
            raise DataError(f"{folder}: anchor/neighbor ids outside [0, {n})")
        if anchor[0] <= last:
            raise DataError(f"{f}: its anchors overlap another part's; rerun `dlrrec similarity swing`")
        last = int(anchor[-1])
        yield anchor, nb, score


def part_pairs(anchor: np.ndarray, nb: np.ndarray, score: np.ndarray, carry: float) -> tuple[np.ndarray, float]:
    """One part's pairs with their cumulative probabilities, and the global cumulative
    score after it: the in-memory build's float64 operations, exactly (`carry` is the
    cumulative score of every earlier pair, prepended so the running sum is the same).

    Anchors without positive scores draw their neighbours uniformly by rank."""
    u, start, counts = np.unique(anchor, return_index=True, return_counts=True)
    score = np.maximum(score, 0.0)
    total = np.add.reduceat(score, start)
    csum = np.cumsum(np.concatenate([[carry], score]))
    before = csum[start]  # the cumulative score before each anchor's first pair
    within = csum[1:] - np.repeat(before, counts)
    tot = np.repeat(total, counts)
    rank_in = np.arange(score.size) - np.repeat(start, counts) + 1
    frac = np.where(tot > 0, within / np.where(tot > 0, tot, 1.0), rank_in / np.repeat(np.maximum(counts, 1), counts))
    frac[start + counts - 1] = 1.0
    out = np.empty(score.size, PAIR)
    out["id"], out["cum"] = nb, np.repeat(u, counts) + frac
    return out, float(csum[-1])


def store_header(fingerprint: str, name: str, n: int, source: Path | None) -> dict[str, Any]:
    """What a neighbour store's header must say (the writer adds "pairs")."""
    return {"format": FORMAT, "fingerprint": fingerprint, "name": name, "n": n, "source": source_digest(source)}


def write_neighbors(path: Path, parts: Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]], head: dict[str, Any]) -> None:
    """Write a store from `read_parts`-ordered parts; `head` is its header but "pairs",
    which is counted here. The file is sized for the pairs as they come (`ftruncate`)."""
    n = int(head["n"])
    base = HEADER_BYTES + (n + 1) * 8

    def fill(fd: int) -> dict[str, Any]:
        done, pairs, carry = 0, 0, 0.0  # anchors whose offset is written, pairs so far
        for anchor, nb, score in parts:
            rec, carry = part_pairs(anchor, nb, score, carry)
            os.pwrite(fd, rec.data, base + pairs * PAIR.itemsize)
            hi = int(anchor[-1]) + 1
            for lo in range(done, hi, CHUNK_ANCHORS):  # offsets of anchors [done, hi), in chunks
                off = pairs + np.searchsorted(anchor, np.arange(lo, min(hi, lo + CHUNK_ANCHORS)))
                os.pwrite(fd, off.astype(np.int64).data, HEADER_BYTES + lo * 8)
            done, pairs = hi, pairs + rec.size
        for lo in range(done, n + 1, CHUNK_ANCHORS):  # the anchors after the last pair's, and n
            off = np.full(min(n + 1, lo + CHUNK_ANCHORS) - lo, pairs, np.int64)
            os.pwrite(fd, off.data, HEADER_BYTES + lo * 8)
        os.ftruncate(fd, base + pairs * PAIR.itemsize)
        return {**head, "pairs": pairs}

    write_atomic(path, base, fill)


class NeighborStore:
    """One kind's SWING lists on disk (the descriptor is shared by threads: pread).

    Example::

        nb = open_neighbors(run / "similarity", "item_item", meta["fingerprint"], n_items)
        pos = nb.sample(item_ids, rng, top1=False)  # [B] one positive per anchor, -1: none
    """

    def __init__(self, path: Path, want: dict[str, Any]) -> None:
        self.path, self.n = path, int(want["n"])
        self._base = HEADER_BYTES + (self.n + 1) * 8
        self._fd = -1
        # the pair count is the writer's (the header's), the rest must be `want`
        self._fd, header = open_checked(path, want, lambda h: self._base + int(h["pairs"]) * PAIR.itemsize)
        self.pairs = int(header["pairs"])

    def lists(self, anchors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(unique sorted anchors' pair offsets [U + 1] from 0, their pairs [P] (id, cum),
        each anchor's index into the unique anchors [B]): one compiled pread of each unique
        anchor's (start, end) offsets, then one of its pairs (`scatter_read`)."""
        unique, inverse = np.unique(np.asarray(anchors, np.int64), return_inverse=True)
        bounds = np.empty((unique.size, 2), np.int64)  # offsets[a], offsets[a + 1]
        scatter_read(self._fd, HEADER_BYTES + unique * 8, np.full(unique.size, 16), bounds, self.path)
        counts = bounds[:, 1] - bounds[:, 0]
        local = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        pairs = np.empty(int(local[-1]), PAIR)
        size = PAIR.itemsize
        scatter_read(self._fd, self._base + bounds[:, 0] * size, counts * size, pairs, self.path)
        return local, pairs, inverse.reshape(-1)

    def sample(self, anchors: np.ndarray, rng: Uniforms, top1: bool) -> np.ndarray:
        """One positive per anchor (-1 when it has none), p ~ score or the top-1."""
        local, pairs, idx = self.lists(anchors)
        start, end = local[idx], local[idx + 1]
        has = end > start
        out = np.full(anchors.shape, -1, dtype=np.int64)
        u = rng.random(anchors.shape)  # drawn even for top1, so the stream is the same
        if top1:
            out[has] = pairs["id"][start[has]]
            return out
        # cum holds anchor + per-anchor cumulative probability in (anchor, anchor+1], rising
        # over the unique sorted anchors, so one searchsorted finds every anchor's draw
        j = np.searchsorted(pairs["cum"], anchors[has] + u[has], side="right")
        out[has] = pairs["id"][np.clip(j, start[has], end[has] - 1)]
        return out

    def neighbor_sets(self, anchors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each anchor's whole list as CSR: lengths [B] and the concatenated ids."""
        local, pairs, idx = self.lists(anchors)
        lengths = local[idx + 1] - local[idx]
        if not lengths.sum():
            return lengths, np.zeros(0, np.int64)
        row_of = np.repeat(np.arange(idx.size), lengths)
        within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return lengths, pairs["id"][local[idx][row_of] + within]

    def marginal(self, anchor_counts: np.ndarray, top1: bool) -> np.ndarray:
        """q(j): the probability that one sampled positive is entity j, over the training rows.

        Each training row's anchor i (occurring `anchor_counts[i]` times) yields one
        positive j with probability p(j | i) (score-proportional, or 1 for the top-1);
        anchors without neighbours yield none. So q(j) = sum_i counts_i p(j | i) / the
        rows whose anchor has neighbours: the exact expected frequency of j among the
        sampled positives, i.e. the sampling probability of an in-batch candidate.
        One pass over the file in chunks of anchors; q is accumulated in pair order.

        Returns: [n] float64, summing to 1 (zeros when no anchor has a neighbour).
        """
        n = self.n
        q, total = np.zeros(n), 0
        for lo in range(0, n, CHUNK_ANCHORS):
            hi = min(n, lo + CHUNK_ANCHORS)
            off = read_at(self._fd, HEADER_BYTES + lo * 8, np.empty(hi - lo + 1, np.int64), self.path)
            counts = np.diff(off)
            pairs = read_at(self._fd, self._base + int(off[0]) * PAIR.itemsize, np.empty(int(off[-1] - off[0]), PAIR), self.path)
            first = (off[:-1] - off[0])[counts > 0]
            if top1:
                p = np.zeros(pairs.size)
                p[first] = 1.0
            else:
                frac = pairs["cum"] - np.repeat(np.arange(lo, hi), counts)  # within-anchor cumulative
                p = np.diff(frac, prepend=0.0)
                p[first] = frac[first]
            mass = np.repeat(anchor_counts[lo:hi].astype(np.float64), counts) * p
            np.add.at(q, pairs["id"], mass)  # in pair order, as one bincount over the whole file
            total += int(anchor_counts[lo:hi][counts > 0].sum())
        return q / float(total) if total > 0 else q

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = -1

    def __del__(self) -> None:
        self.close()


def open_neighbors(similarity: Path, kind: str, fingerprint: str, n: int) -> NeighborStore:
    """`similarity/neighbors/{kind}.csr`, written first from `similarity/{kind}/part-*`
    when missing (by whichever process takes the lock first).

    Raises:
        DataError: the parts are missing or invalid (`read_parts`), or the store is
            foreign or stale.
    """
    source = similarity / kind
    path = similarity / FOLDER / f"{kind}.csr"
    want = store_header(fingerprint, kind, n, source)
    write_once(path, lambda: write_neighbors(path, read_parts(source, n), want))
    return NeighborStore(path, want)
