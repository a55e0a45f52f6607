"""The InfoNCE sampler's data side: positive-sampler marginals (for logQ) and extra negatives."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from synthetic import make_run

from trainer.data import make_batch, read_neighbors, read_training_data, train_batches

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
    return read_neighbors(d, 5)


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
    split = data.splits["train"]
    rows = np.arange(64)
    valid = np.ones(64, bool)
    plain = make_batch(data, split, rows, valid, np.random.default_rng([1, 2]), False)
    mixed = make_batch(data, split, rows, valid, np.random.default_rng([1, 2]), False, extra_negatives=16)
    assert plain.ii_neg_ids.numel() == 0 and plain.entity["item_text/neg"].values().numel() == 0
    # the same positives: the negatives are drawn after them from the same stream
    assert np.array_equal(plain.ii_pos_ids.numpy(), mixed.ii_pos_ids.numpy())
    assert np.array_equal(plain.uu_pos_ids.numpy(), mixed.uu_pos_ids.numpy())
    for prefix, entity, col in (("ii", "item", "item_text"), ("uu", "user", "user_text")):
        q, catalogue = data.sampler_tables(entity, False)
        content = data.entity_columns[col].read_rows(0, data.entity_columns[col].n)
        np.testing.assert_array_equal(catalogue, np.flatnonzero(np.abs(content).max(1) > 0))
        ids = getattr(mixed, f"{prefix}_neg_ids").numpy()
        assert ids.shape == (16,) and np.isin(ids, catalogue).all()
        # the model looks the negatives up by these ids: all 16 in the first bag
        neg = mixed.entity[f"{col}/neg"]
        np.testing.assert_array_equal(neg.values().numpy(), ids)
        assert neg.lengths().tolist() == [16] + [0] * 63
        np.testing.assert_allclose(getattr(mixed, f"{prefix}_neg_q").numpy(), q[ids], rtol=1e-6)
        pos = getattr(mixed, f"{prefix}_pos_ids").numpy()
        want = np.where(pos >= 0, q[np.maximum(pos, 0)], 0)
        np.testing.assert_allclose(getattr(mixed, f"{prefix}_pos_q").numpy(), want, rtol=1e-6)


def test_ranks_share_the_global_batch_extra_negatives(data):
    kw = {"global_batch": 64, "epoch": 0, "seed": 3, "top1": False, "max_steps": 2, "extra_negatives": 8}
    (full,) = [next(train_batches(data, rank=0, world_size=1, **kw))]
    parts = [next(train_batches(data, rank=r, world_size=2, **kw)) for r in (0, 1)]
    for r, part in enumerate(parts):
        assert np.array_equal(part.ii_neg_ids.numpy(), full.ii_neg_ids.numpy())
        assert np.array_equal(part.uu_neg_ids.numpy(), full.uu_neg_ids.numpy())
        sl = slice(32 * r, 32 * (r + 1))
        assert np.array_equal(part.ii_pos_q.numpy(), full.ii_pos_q[sl].numpy())
        assert np.array_equal(part.uu_pos_ids.numpy(), full.uu_pos_ids[sl].numpy())


def test_positive_sets_are_the_anchors_swing_lists_and_slice_per_rank(data):
    kw = {"global_batch": 64, "epoch": 1, "seed": 0, "top1": False, "max_steps": 1}
    plain = next(train_batches(data, rank=0, world_size=1, **kw))
    assert plain.ii_set_lengths.sum() == 0 and plain.ii_set_ids.numel() == 0
    full = next(train_batches(data, rank=0, world_size=1, positive_sets=True, **kw))
    assert np.array_equal(full.ii_pos_ids.numpy(), plain.ii_pos_ids.numpy())  # same stream
    for prefix, ids, nb in (("ii", full.item_ids, data.item_neighbors), ("uu", full.user_ids, data.user_neighbors)):
        lengths = getattr(full, f"{prefix}_set_lengths").numpy()
        flat = getattr(full, f"{prefix}_set_ids").numpy()
        ends = np.cumsum(lengths)
        for r, anchor in enumerate(ids.numpy()):
            want = nb.ids[nb.offsets[anchor] : nb.offsets[anchor + 1]]
            assert np.array_equal(flat[ends[r] - lengths[r] : ends[r]], want)
        parts = [next(train_batches(data, rank=k, world_size=2, positive_sets=True, **kw)) for k in (0, 1)]
        assert np.array_equal(
            np.concatenate([getattr(x, f"{prefix}_set_lengths").numpy() for x in parts]), lengths
        )
        assert np.array_equal(np.concatenate([getattr(x, f"{prefix}_set_ids").numpy() for x in parts]), flat)
