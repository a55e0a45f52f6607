"""Cold-start ids (`train.id_dropout`): the cold row, id dropout and unseen ids at evaluation."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from synthetic import make_run, refresh_counts
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from trainer.cold_start import ColdIds, build_cold_ids, id_dropout_mask, seen_ids, with_cold_ids
from trainer.config import TrainConfig
from trainer.data import make_batch, read_training_data


def test_with_cold_ids_replaces_only_the_masked_rows_of_one_key():
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=["categories", "user_id", "item_id"],
        values=torch.tensor([1, 2, 3, 4, 10, 11, 12, 20, 21, 22]),
        lengths=torch.tensor([2, 1, 1, 1, 1, 1, 1, 1, 1], dtype=torch.int32),
    )
    out = with_cold_ids(kjt, "user_id", torch.tensor([False, True, True]), 99)
    assert out["user_id"].values().tolist() == [10, 99, 99]
    assert out["item_id"].values().tolist() == [20, 21, 22]
    assert out["categories"].values().tolist() == [1, 2, 3, 4]
    assert kjt["user_id"].values().tolist() == [10, 11, 12]  # the input is not modified
    with pytest.raises(ValueError, match="one id per row"):
        with_cold_ids(kjt, "categories", torch.tensor([True, False, False]), 0)


def test_id_dropout_mask_is_a_pure_function_with_rate_p():
    a = id_dropout_mask(3, 1, 7, 0, 4096, 0.2)
    assert np.array_equal(a, id_dropout_mask(3, 1, 7, 0, 4096, 0.2))
    assert not np.array_equal(a, id_dropout_mask(3, 1, 7, 1, 4096, 0.2))  # user and item draw apart
    assert abs(a.mean() - 0.2) < 0.03
    assert not id_dropout_mask(3, 1, 7, 0, 64, 0.0).any()


@pytest.fixture(scope="module")
def run_without_user_0(tmp_path_factory) -> Path:
    """The synthetic run with user 0's training rows removed: its val/test rows are cold."""
    root = make_run(tmp_path_factory.mktemp("cold") / "run")
    part = root / "features" / "examples" / "train" / "part-00000.parquet"
    t = pq.read_table(part)
    keep = np.asarray(t.column("user_id").to_numpy()) != 0
    pq.write_table(t.filter(keep), part)
    refresh_counts(root)
    return root


def test_unseen_ids_are_scored_with_the_cold_row_and_rank_slices_agree(run_without_user_0: Path):
    data = read_training_data(run_without_user_0, ["text"], False)
    train = data.read_rows("train")
    cold = build_cold_ids(0.3, data.sparse_names, data.sparse_vocab, {"user_id": train.user_id, "item_id": train.item_id})
    assert isinstance(cold, ColdIds)
    assert cold.cold_id == {"user_id": 60, "item_id": 40}
    assert not cold.seen["user_id"][0] and cold.seen["user_id"][1:].all()
    test = data.read_rows("test")
    rows = np.arange(test.n)
    batch = make_batch(data, test, rows, np.ones(test.n, bool), np.random.default_rng(0), True)
    out = cold.eval_batch(batch)
    users = out.sparse["user_id"].values().numpy()
    assert (test.user_id == 0).any()
    assert np.array_equal(users, np.where(test.user_id == 0, 60, test.user_id))
    assert np.array_equal(out.sparse["item_id"].values().numpy(), test.item_id)  # every item was seen
    # training: rank r of 2 drops exactly the rows of its slice of the global draw
    rows = np.arange(256)
    full = make_batch(data, train, rows, np.ones(256, bool), np.random.default_rng(0), True)
    one = cold.train_batch(full, 0, 2, 5, 256, rank=0, world_size=1)
    mask = id_dropout_mask(0, 2, 5, 0, 256, 0.3)
    assert np.array_equal(one.sparse["user_id"].values().numpy(), np.where(mask, 60, train.user_id[:256]))
    from trainer.data import slice_batch

    half = cold.train_batch(slice_batch(full, data.sparse_names, 128, 128), 0, 2, 5, 256, rank=1, world_size=2)
    assert np.array_equal(half.sparse["user_id"].values().numpy(), one.sparse["user_id"].values().numpy()[128:])


def test_training_with_id_dropout_learns_and_is_off_by_default(run_without_user_0: Path, tmp_path: Path):
    from trainer.main import run

    root = tmp_path / "run"
    shutil.copytree(run_without_user_0 / "features", root / "features")
    shutil.copytree(run_without_user_0 / "similarity", root / "similarity")
    cfg = TrainConfig(run_dir=str(root), epochs=3, batch_size=256, embedding_dim=8, sparse_lr=0.3, emb_l2=0.0,
                      id_dropout=0.2, log_every=0)  # fmt: skip
    report = run(cfg)
    assert report["config"]["id_dropout"] == 0.2
    assert report["test"]["auc"] > 0.8, report["test"]
    assert build_cold_ids(0.0, ["user_id"], {"user_id": 3}, {"user_id": np.array([0])}) is None
    assert seen_ids(np.array([2, 2]), 4).tolist() == [False, False, True, False]
