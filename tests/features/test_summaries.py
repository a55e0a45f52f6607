"""Out-of-fold review sets (features/summaries.py) against a slow reference."""

from __future__ import annotations

import numpy as np

from features.summaries import out_of_fold_sets, review_folds


def test_review_folds_depend_only_on_the_review_id() -> None:
    ids = [f"r{i}" for i in range(3000)]
    folds = review_folds(ids, 5, seed=0)
    assert folds.min() == 0 and folds.max() == 4
    assert np.bincount(folds).min() > 500  # roughly even
    # A review keeps its fold whatever else is in the table, and the seed reshuffles.
    assert review_folds(ids[7:8], 5, seed=0)[0] == folds[7]
    assert (review_folds(ids, 5, seed=1) != folds).mean() > 0.5


def test_out_of_fold_sets_match_a_slow_reference() -> None:
    rng = np.random.default_rng(0)
    n, n_ent, k = 400, 23, 4
    owner = rng.integers(0, n_ent - 2, n)  # the last two entities have no rows
    train = rng.random(n) < 0.7
    folds = rng.integers(0, k, n)
    rs = out_of_fold_sets(owner, train, folds, k, n_ent)

    def reference(e: int, fold: int | None) -> tuple[int, ...]:
        return tuple(
            r for r in range(n) if train[r] and owner[r] == e and (fold is None or folds[r] != fold)
        )

    for r in range(n):
        want = reference(int(owner[r]), int(folds[r]) if train[r] else None)
        assert rs.sets[rs.row_set[r]] == (owner[r], want)
        if train[r]:
            assert r not in want  # a training row never reads its own review
    for e in range(n_ent):
        assert rs.sets[rs.entity_set[e]] == (e, reference(e, None))
    # Each distinct (entity, review set) is asked about once.
    assert len(set(rs.sets)) == len(rs.sets)
    used = set(rs.row_set.tolist()) | set(rs.entity_set.tolist())
    assert used == set(range(len(rs.sets)))


def test_temporal_blocks_read_strictly_earlier_reviews() -> None:
    from features.summaries import time_blocks

    rng = np.random.default_rng(1)
    n, n_ent, k = 300, 11, 4
    owner = rng.integers(0, n_ent, n)
    ts = rng.integers(0, 40, n)  # ties
    train = ts < 30
    blocks = time_blocks(ts, train, k)
    assert set(blocks[train].tolist()) == set(range(k))
    for b in range(k - 1):  # every review of a lower block is strictly earlier
        assert ts[train & (blocks == b)].max() < ts[train & (blocks == b + 1)].min()
    rs = out_of_fold_sets(owner, train, blocks, k, n_ent, earlier=True)
    for r in range(n):
        e = int(owner[r])
        want = tuple(
            q for q in range(n) if train[q] and owner[q] == e and (not train[r] or ts[q] < ts[r])
            and (not train[r] or blocks[q] < blocks[r])
        )  # fmt: skip
        assert rs.sets[rs.row_set[r]] == (e, want)
        assert all(ts[q] < ts[r] for q in want)  # strictly earlier, own review excluded
    assert len(set(rs.sets)) == len(rs.sets)  # equal sets (empty blocks) merged
