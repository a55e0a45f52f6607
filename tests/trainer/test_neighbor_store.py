"""SWING neighbour lists in disk-backed CSR stores (trainer/neighbor_store.py).

The reference is the former in-memory build, kept here verbatim: every part read,
concatenated and sorted, cumulative probabilities over the whole table, one global
searchsorted and one bincount. On a multi-part table (uneven lists, anchors without
neighbours, all-zero scores, parts written out of anchor order) the store's sampled
positives, positive sets and marginals equal it bit for bit, reads fetch only the
asked anchors' lists, and a foreign or stale store is refused.
"""

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dlrrec.config import DataError
from trainer.neighbor_store import open_neighbors
from trainer.vector_store import HEADER_BYTES


def reference_lists(folder: Path, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(offsets, ids, cum_probs) as the former `read_neighbors` built them in memory."""
    files = sorted(folder.glob("part-*.parquet"))
    t = pa.concat_tables([pq.read_table(f, columns=["anchor", "neighbor", "score", "rank"]) for f in files])
    anchor = t.column("anchor").to_numpy()
    order = np.lexsort((t.column("rank").to_numpy(), anchor))
    anchor = anchor[order].astype(np.int64)
    nb = t.column("neighbor").to_numpy()[order].astype(np.int64)
    score = t.column("score").to_numpy()[order].astype(np.float64)
    counts = np.bincount(anchor, minlength=n)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    score = np.maximum(score, 0.0)
    sums = np.add.reduceat(score, offsets[:-1][counts > 0]) if score.size else np.zeros(0)
    total = np.zeros(n)
    total[counts > 0] = sums
    seg = np.repeat(np.arange(n), counts)
    csum = np.cumsum(score)
    before = np.concatenate([[0.0], csum])[offsets[:-1]]
    within = csum - np.repeat(before, counts)
    tot = np.repeat(total, counts)
    rank_in = np.arange(score.size) - np.repeat(offsets[:-1], counts) + 1
    frac = np.where(tot > 0, within / np.where(tot > 0, tot, 1.0), rank_in / np.repeat(np.maximum(counts, 1), counts))
    frac[offsets[1:][counts > 0] - 1] = 1.0
    return offsets, nb, seg + frac


def reference_sample(lists: tuple, anchors: np.ndarray, rng: np.random.Generator, top1: bool) -> np.ndarray:
    offsets, ids, cum = lists
    start, end = offsets[anchors], offsets[anchors + 1]
    has = end > start
    out = np.full(anchors.shape, -1, dtype=np.int64)
    u = rng.random(anchors.shape)
    if top1:
        out[has] = ids[start[has]]
        return out
    j = np.searchsorted(cum, anchors[has] + u[has], side="right")
    out[has] = ids[np.clip(j, start[has], end[has] - 1)]
    return out


def reference_marginal(lists: tuple, anchor_counts: np.ndarray, top1: bool) -> np.ndarray:
    offsets, ids, cum = lists
    n = offsets.size - 1
    counts = np.diff(offsets)
    first = offsets[:-1][counts > 0]
    if top1:
        p = np.zeros(ids.size)
        p[first] = 1.0
    else:
        frac = cum - np.repeat(np.arange(n), counts)
        p = np.diff(frac, prepend=0.0)
        p[first] = frac[first]
    mass = np.repeat(anchor_counts[:n].astype(np.float64), counts) * p
    q = np.bincount(ids, weights=mass, minlength=n)[:n] if ids.size else np.zeros(n)
    total = float(anchor_counts[:n][counts > 0].sum())
    return q / total if total > 0 else q


def write_swing(folder: Path, n: int, seed: int) -> None:
    """Random top-K lists (0-7 neighbours, some all-zero scores) in 3 anchor-range parts,
    rows shuffled within each part, file names not in anchor order."""
    rng = np.random.default_rng(seed)
    rows = []
    for a in range(n):
        k = int(rng.integers(0, 8))
        nbs = rng.choice(n, size=k, replace=False)
        scores = np.zeros(k) if a % 11 == 0 else rng.gamma(0.5, size=k) * (rng.random(k) > 0.2)
        rows += [(a, int(j), float(s), r) for r, (j, s) in enumerate(zip(nbs, scores))]
    folder.mkdir(parents=True)
    bounds = [0, n // 3, 2 * n // 3, n]
    for p, name in zip(range(3), ("part-00002", "part-00000", "part-00001")):
        part = [r for r in rows if bounds[p] <= r[0] < bounds[p + 1]]
        part = [part[i] for i in rng.permutation(len(part))]
        a, j, s, r = (list(x) for x in zip(*part))
        pq.write_table(
            pa.table({"anchor": pa.array(a, pa.int64()), "neighbor": pa.array(j, pa.int64()),
                      "score": pa.array(s, pa.float32()), "rank": pa.array(r, pa.int16())}),
            folder / f"{name}.parquet", row_group_size=50,
        )  # fmt: skip


@pytest.mark.parametrize("top1", [False, True])
def test_samples_sets_and_marginals_equal_the_in_memory_lists(tmp_path: Path, top1: bool, monkeypatch):
    n = 300
    write_swing(tmp_path / "item_item", n, 0)
    monkeypatch.setattr("trainer.neighbor_store.CHUNK_ANCHORS", 64)  # several chunks per pass
    store = open_neighbors(tmp_path, "item_item", "fp", n)
    ref = reference_lists(tmp_path / "item_item", n)
    assert store.pairs == ref[1].size
    counts = np.random.default_rng(1).integers(0, 9, n)
    q = store.marginal(counts, top1)
    assert q.tobytes() == reference_marginal(ref, counts, top1).tobytes()
    for seed in range(5):
        anchors = np.random.default_rng(seed).integers(0, n, 257)
        got = store.sample(anchors, np.random.default_rng([seed, 9]), top1)
        want = reference_sample(ref, anchors, np.random.default_rng([seed, 9]), top1)
        np.testing.assert_array_equal(got, want)
        lengths, ids = store.neighbor_sets(anchors)
        offsets, nb, _ = ref
        np.testing.assert_array_equal(lengths, offsets[anchors + 1] - offsets[anchors])
        np.testing.assert_array_equal(ids, np.concatenate([nb[offsets[a] : offsets[a + 1]] for a in anchors]))


def test_a_batch_reads_only_its_anchors_lists(tmp_path: Path, read_ranges: list[tuple[int, int]]):
    n = 300
    write_swing(tmp_path / "user_user", n, 2)
    store = open_neighbors(tmp_path, "user_user", "fp", n)
    offsets, _, _ = reference_lists(tmp_path / "user_user", n)
    store.sample(np.array([7, 8, 9, 200, 7]), np.random.default_rng(0), False)
    unique = (7, 8, 9, 200)
    base = store._base
    want = [(HEADER_BYTES + a * 8, 16) for a in unique]  # each anchor's (start, end)
    want += [(base + int(offsets[a]) * 16, int(offsets[a + 1] - offsets[a]) * 16) for a in unique]
    assert sorted(read_ranges) == sorted(want)


def test_foreign_stale_and_overlapping_tables_are_refused(tmp_path: Path):
    n = 60
    write_swing(tmp_path / "item_item", n, 3)
    open_neighbors(tmp_path, "item_item", "fp-a", n)
    with pytest.raises(DataError, match=r"item_item.csr: foreign store \(fingerprint fp-a"):
        open_neighbors(tmp_path, "item_item", "fp-b", n)
    part = tmp_path / "item_item" / "part-00000.parquet"
    st = part.stat()
    os.utime(part, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(DataError, match="stale store"):
        open_neighbors(tmp_path, "item_item", "fp-a", n)
    # two parts holding the same anchor: not SWING's output
    other = tmp_path / "other"
    write_swing(other / "user_user", n, 4)
    t = pq.read_table(other / "user_user" / "part-00000.parquet")
    pq.write_table(t, other / "user_user" / "part-00009.parquet")
    with pytest.raises(DataError, match="overlap another part's"):
        open_neighbors(other, "user_user", "fp", n)
    assert not (other / "neighbors" / "user_user.csr").exists()  # no partial store
