"""The InfoNCE sampler's data side: positive-sampler marginals (for logQ) and extra negatives."""

import os
import sys
import threading
from operator import attrgetter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from synthetic import make_run

from trainer import data as trainer_data
from trainer.data import make_batch, read_training_data, train_batches
from trainer.neighbor_store import open_neighbors

# anchor -> [(neighbour, score)]: uneven lists, an anchor without neighbours, all-zero scores
PAIRS = {0: [(1, 3.0), (2, 1.0), (4, 0.5)], 2: [(0, 2.0)], 3: [(1, 0.0), (4, 0.0)], 4: [(3, 1.0), (0, 1.0)]}


def _neighbors(tmp_path: Path):
    rows = [(a, nb, s, r) for a, lst in PAIRS.items() for r, (nb, s) in enumerate(lst)]
    d = tmp_path / "item_item"
    d.mkdir()
    a, nb, s, r = (list(x) for x in zip(*rows))
    pq.write_table(
        pa.table({"anchor": pa.array(a, pa.int64()), "neighbor": pa.array(nb, pa.int64()),
                  "score": pa.array(s, pa.float32()), "rank": pa.array(r, pa.int16())}),
        d / "part-00000.parquet",
    )  # fmt: skip
    return open_neighbors(tmp_path, "item_item", "fp", 5)


def marginal_brute_force(counts: np.ndarray, top1: bool) -> np.ndarray:
    q = np.zeros(5)
    rows = 0
    for i, lst in PAIRS.items():
        rows += counts[i]
        scores = np.array([s for _, s in lst])
        p = np.full(len(lst), 1.0 / len(lst)) if scores.sum() == 0 else scores / scores.sum()
        if top1:
            p = np.eye(len(lst))[0]
        for (j, _), pj in zip(lst, p):
            q[j] += counts[i] * pj
    return q / rows


@pytest.mark.parametrize("top1", [False, True])
def test_positive_marginal_matches_brute_force_and_sampling(tmp_path: Path, top1: bool):
    nb = _neighbors(tmp_path)
    counts = np.array([5, 7, 1, 3, 4])
    q = nb.marginal(counts, top1)
    np.testing.assert_allclose(q, marginal_brute_force(counts, top1), rtol=1e-12, atol=1e-15)
    assert q.sum() == pytest.approx(1.0)
    # the empirical frequency of the sampler's positives over training rows converges to q
    rng = np.random.default_rng(0)
    anchors = rng.choice(5, size=200_000, p=counts / counts.sum())
    drawn = nb.sample(anchors, rng, top1)
    freq = np.bincount(drawn[drawn >= 0], minlength=5) / (drawn >= 0).sum()
    np.testing.assert_allclose(freq, q, atol=0.005)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("synthetic") / "run")
    return read_training_data(run, ["text"], contrastive=True)


def test_extra_negatives_leave_positives_alone_and_come_from_the_catalogue(data):
    split = data.read_rows("train")
    rows = np.arange(64)
    valid = np.ones(64, bool)
    plain = make_batch(data, split, rows, valid, np.random.default_rng([1, 2]), False)
    mixed = make_batch(data, split, rows, valid, np.random.default_rng([1, 2]), False, extra_negatives=16)
    assert plain.ii.neg_ids.numel() == 0 and plain.vectors["item_text/neg"].shape == (0, 384)
    # the same positives: the negatives are drawn after them from the same stream
    assert np.array_equal(plain.ii.pos_ids.numpy(), mixed.ii.pos_ids.numpy())
    assert np.array_equal(plain.uu.pos_ids.numpy(), mixed.uu.pos_ids.numpy())
    for prefix, entity, col in (("ii", "item", "item_text"), ("uu", "user", "user_text")):
        q, catalogue = data.sampler_tables(entity, False)
        content = data.entity_columns[col].read(np.arange(data.entity_columns[col].n))
        np.testing.assert_array_equal(catalogue, np.flatnonzero(np.abs(content).max(1) > 0))
        ids = getattr(mixed, prefix).neg_ids.numpy()
        assert ids.shape == (16,) and np.isin(ids, catalogue).all()
        # the batch carries these ids' vectors, shared by all its rows
        np.testing.assert_array_equal(mixed.vectors[f"{col}/neg"].numpy(), content[ids])
        np.testing.assert_allclose(getattr(mixed, prefix).neg_q.numpy(), q[ids], rtol=1e-6)
        pos = getattr(mixed, prefix).pos_ids.numpy()
        want = np.where(pos >= 0, q[np.maximum(pos, 0)], 0)
        np.testing.assert_allclose(getattr(mixed, prefix).pos_q.numpy(), want, rtol=1e-6)


def test_ranks_share_the_global_batch_extra_negatives(data):
    kw = {"global_batch": 64, "epoch": 0, "seed": 3, "top1": False, "max_steps": 2, "extra_negatives": 8}
    (full,) = [next(train_batches(data, rank=0, world_size=1, **kw))]
    parts = [next(train_batches(data, rank=r, world_size=2, **kw)) for r in (0, 1)]
    for r, part in enumerate(parts):
        assert np.array_equal(part.ii.neg_ids.numpy(), full.ii.neg_ids.numpy())
        assert np.array_equal(part.uu.neg_ids.numpy(), full.uu.neg_ids.numpy())
        sl = slice(32 * r, 32 * (r + 1))
        assert np.array_equal(part.ii.pos_q.numpy(), full.ii.pos_q[sl].numpy())
        assert np.array_equal(part.uu.pos_ids.numpy(), full.uu.pos_ids[sl].numpy())


def test_positive_sets_are_the_anchors_swing_lists_and_slice_per_rank(data):
    kw = {"global_batch": 64, "epoch": 1, "seed": 0, "top1": False, "max_steps": 1}
    plain = next(train_batches(data, rank=0, world_size=1, **kw))
    assert plain.ii.set_lengths.sum() == 0 and plain.ii.set_ids.numel() == 0
    full = next(train_batches(data, rank=0, world_size=1, positive_sets=True, **kw))
    assert np.array_equal(full.ii.pos_ids.numpy(), plain.ii.pos_ids.numpy())  # same stream
    run = data.parts["train"].folder.parents[2]
    for prefix, ids, kind in (("ii", full.item_ids, "item_item"), ("uu", full.user_ids, "user_user")):
        lengths = getattr(full, prefix).set_lengths.numpy()
        flat = getattr(full, prefix).set_ids.numpy()
        ends = np.cumsum(lengths)
        swing = pq.read_table(run / "similarity" / kind)
        anchor_col, rank, nbs = (swing.column(c).to_numpy() for c in ("anchor", "rank", "neighbor"))
        for r, anchor in enumerate(ids.numpy()):  # the reference: the SWING Parquet rows
            mine = anchor_col == anchor
            want = nbs[mine][np.argsort(rank[mine])]
            assert np.array_equal(flat[ends[r] - lengths[r] : ends[r]], want)
        parts = [next(train_batches(data, rank=k, world_size=2, positive_sets=True, **kw)) for k in (0, 1)]
        assert np.array_equal(
            np.concatenate([getattr(x, prefix).set_lengths.numpy() for x in parts]), lengths
        )
        assert np.array_equal(np.concatenate([getattr(x, prefix).set_ids.numpy() for x in parts]), flat)


@pytest.fixture(scope="module")
def blocked(tmp_path_factory):
    """The synthetic run with its training rows in 97-row blocks (row groups) over 3 parts."""
    run = make_run(tmp_path_factory.mktemp("blocked") / "run", n_rows=4000)
    folder = run / "features" / "examples" / "train"
    table = pq.read_table(folder / "part-00000.parquet")
    (folder / "part-00000.parquet").unlink()
    third = -(-table.num_rows // 3)
    for k in range(3):
        pq.write_table(table.slice(k * third, third), folder / f"part-{k:05d}.parquet", row_group_size=97)
    return read_training_data(run, ["text"], contrastive=True), table


def _cat(batches, name):
    return np.concatenate([attrgetter(name)(b).numpy() for b in batches])


def test_any_world_size_builds_the_same_global_batches_from_its_own_blocks(blocked, monkeypatch):
    from trainer.data import LANES, SplitParts

    data, table = blocked
    kw = {"global_batch": 128, "epoch": 2, "seed": 5, "top1": False, "max_steps": 6, "extra_negatives": 4}
    one = list(train_batches(data, rank=0, world_size=1, **kw))
    assert len(one) == 6
    # every row of the epoch's 6 * 128 is a distinct training row
    pairs = set(zip(_cat(one, "user_ids").tolist(), _cat(one, "item_ids").tolist(), _cat(one, "labels").tolist()))
    assert pairs <= set(zip(*(table[c].to_pylist() for c in ("user_id", "item_id", "label"))))
    read: list[int] = []
    real = SplitParts.read_block
    monkeypatch.setattr(SplitParts, "read_block", lambda self, k: read.append(k) or real(self, k))
    for world in (2, 4, 8):
        ranks = []
        for r in range(world):
            read.clear()
            ranks.append(list(train_batches(data, rank=r, world_size=world, **kw)))
            # the blocks this rank's lanes touch, and no other
            n_blocks = len(data.parts["train"].blocks)
            assert 0 < len(set(read)) <= -(-6 * 128 // world // 97) + LANES // world + 1 < n_blocks
        for step in range(6):
            local = [rk[step] for rk in ranks]
            for name in ("user_ids", "item_ids", "labels", "ii.pos_ids", "uu.pos_ids", "ii.pos_q"):
                np.testing.assert_array_equal(_cat(local, name), attrgetter(name)(one[step]).numpy())
            for part in local:  # the shared extra negatives
                np.testing.assert_array_equal(part.ii.neg_ids.numpy(), one[step].ii.neg_ids.numpy())
    # resuming at step 4 reads on from there and gives the same batches
    resumed = list(train_batches(data, rank=1, world_size=2, start_step=4, **kw))
    full = list(train_batches(data, rank=1, world_size=2, **kw))
    assert len(resumed) == 2
    for a, b in zip(resumed, full[4:], strict=True):
        np.testing.assert_array_equal(a.item_ids.numpy(), b.item_ids.numpy())
        np.testing.assert_array_equal(a.uu.pos_ids.numpy(), b.uu.pos_ids.numpy())
    # another epoch is another order
    other = next(train_batches(data, rank=0, world_size=1, **{**kw, "epoch": 3}))
    assert not np.array_equal(other.item_ids.numpy(), one[0].item_ids.numpy())


def test_eval_ranks_score_contiguous_shares_of_every_row(blocked):
    from trainer.data import eval_batches

    data, _ = blocked
    n = data.parts["train"].n
    want = data.read_rows("train")
    for world in (1, 2, 3):
        ids, labels = [], []
        for r in range(world):
            for batch, rows in eval_batches(data, "train", 256, r, world):
                assert rows.size == 256 // world
                ids.append(rows)
                labels.append(batch.labels.numpy())
        ids_, labels_ = np.concatenate(ids), np.concatenate(labels)
        keep = ids_ >= 0
        order = np.argsort(ids_[keep])
        np.testing.assert_array_equal(ids_[keep][order], np.arange(n))
        np.testing.assert_array_equal(labels_[keep][order], want.label)


def test_lanes_refuse_a_batch_or_world_size_they_cannot_split(data):
    from dlrrec.config import ConfigError

    with pytest.raises(ConfigError, match="train.batch_size: 100 is not a multiple of the 8"):
        next(train_batches(data, 100, 0, 1, 0, 0, False))
    with pytest.raises(ConfigError, match="train.data_lanes: world size 3 must divide the 8 data lanes"):
        next(train_batches(data, 96, 0, 3, 0, 0, False))
    with pytest.raises(ConfigError, match="train.batch_size: 128 is not a multiple of the 6"):
        next(train_batches(data, 128, 0, 3, 0, 0, False, lanes=6))


def test_more_lanes_serve_other_world_sizes_with_the_same_global_batches(blocked):
    """3 and 6 ranks (not divisors of the default 8 lanes) with `lanes=6` rebuild the
    1-rank global batches of the same lane count."""
    data, _ = blocked
    kw = {"global_batch": 120, "epoch": 1, "seed": 3, "top1": False, "max_steps": 5, "lanes": 6}
    one = list(train_batches(data, rank=0, world_size=1, **kw))
    default = list(train_batches(data, rank=0, world_size=1, **{**kw, "global_batch": 128, "lanes": 8}))
    assert not np.array_equal(one[0].item_ids.numpy()[:120], default[0].item_ids.numpy()[:120])
    for world in (3, 6):
        ranks = [list(train_batches(data, rank=r, world_size=world, **kw)) for r in range(world)]
        for step in range(5):
            for name in ("user_ids", "item_ids", "labels", "ii.pos_ids", "uu.pos_ids"):
                np.testing.assert_array_equal(
                    _cat([rk[step] for rk in ranks], name), attrgetter(name)(one[step]).numpy()
                )


def _thread_nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
def test_the_training_reader_thread_runs_below_the_step_priority(data, monkeypatch):
    """The reader thread lowers its own priority (READER_NICE) and nothing else's: the
    step's thread keeps its nice value, and the batches are the same either way."""
    seen: list[int] = []
    real = trainer_data.make_batch

    def spy(*args, **kwargs):
        seen.append(_thread_nice())
        return real(*args, **kwargs)

    kw = dict(global_batch=64, epoch=0, seed=0, top1=False, max_steps=3)
    before = _thread_nice()
    plain = list(trainer_data.prefetched(iter(range(3))))  # nice 0: a plain reader
    monkeypatch.setattr(trainer_data, "make_batch", spy)
    batches = list(train_batches(data, rank=0, world_size=1, **kw))
    assert plain == [0, 1, 2] and len(batches) == 3
    assert seen == [min(before + trainer_data.READER_NICE, 19)] * 3 and trainer_data.READER_NICE > 0
    assert _thread_nice() == before
    monkeypatch.setattr(trainer_data, "READER_NICE", 0)
    again = list(train_batches(data, rank=0, world_size=1, **kw))
    for a, b in zip(batches, again, strict=True):
        assert torch.equal(a.item_ids, b.item_ids) and torch.equal(a.ii.pos_ids, b.ii.pos_ids)
    assert seen[3:] == [before] * 3
