"""The rating head (`train.rating_weight`): its loss by hand, its data and its errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from synthetic import make_run, refresh_counts

from launch.cli import main
from trainer.config import TrainConfig
from trainer.data import read_training_data
from trainer.loss import rating_loss


def with_ratings(run: Path) -> dict[str, np.ndarray]:
    """Add a 1-5 `rating` column (label 1 -> 4 or 5, label 0 -> 1..3) to every split."""
    rng = np.random.default_rng(7)
    out = {}
    for split in ("train", "val", "test"):
        part = run / "features" / "examples" / split / "part-00000.parquet"
        t = pq.read_table(part)
        label = t["label"].to_numpy()
        r = np.where(label > 0.5, rng.integers(4, 6, t.num_rows), rng.integers(1, 4, t.num_rows))
        out[split] = r.astype(np.float32)
        pq.write_table(t.append_column("rating", pa.array(out[split], pa.float32())), part)
    refresh_counts(run)
    return out


def test_rating_loss_is_the_weighted_mean_square_by_hand():
    pred = torch.tensor([0.5, -1.0, 2.0, 0.0])
    target = torch.tensor([1.0, -1.5, 0.0, 9.0])
    w = torch.tensor([1.0, 1.0, 1.0, 0.0])  # the last row is padding
    by_hand = ((0.5 - 1.0) ** 2 + (-1.0 + 1.5) ** 2 + (2.0 - 0.0) ** 2) / 3
    assert rating_loss(pred, target, w).item() == pytest.approx(by_hand, abs=1e-7)
    assert rating_loss(pred, target, torch.zeros(4)).item() == 0.0


def test_only_training_ratings_are_read(tmp_path: Path):
    run = make_run(tmp_path / "run", n_rows=600)
    ratings = with_ratings(run)
    data = read_training_data(run, ["text"], True)
    assert np.array_equal(data.read_rows("train").rating, ratings["train"])
    assert data.read_rows("val").rating is None and data.read_rows("test").rating is None


def test_head_adds_weight_times_mse_of_an_affine_map_of_the_logit(tmp_path: Path):
    from trainer.data import train_batches
    from trainer.main import build_loss_weights
    from trainer.model import DLRRECTrain, LossWeights

    run = make_run(tmp_path / "run", n_rows=600)
    ratings = with_ratings(run)
    cfg = TrainConfig(run_dir=str(run), rating_weight=0.5, contrastive=False, embedding_dim=8)
    data = read_training_data(run, ["text"], False)
    weights = build_loss_weights(cfg, data, pos_weight=1.0)
    w, mean, std = weights.rating_weight, weights.rating_mean, weights.rating_std
    assert (w, mean, std) == pytest.approx((0.5, ratings["train"].mean(), ratings["train"].std()))
    batch = next(iter(train_batches(data, 64, 0, 1, 0, 0, False)))
    # each row carries its own rating (the fixture's ratings agree with the labels)
    assert torch.equal(batch.ratings >= 4, batch.labels > 0.5)

    class Fixed(torch.nn.Module):
        def forward(self, dense, sparse, content):
            return torch.linspace(-2.0, 2.0, dense.shape[0]), torch.zeros(dense.shape[0], 1, 1)

    plain = DLRRECTrain(Fixed(), LossWeights())
    head = DLRRECTrain(Fixed(), LossWeights(rating_weight=w, rating_mean=mean, rating_std=std))
    with torch.no_grad():
        head.rating_head.weight.fill_(0.7)
        head.rating_head.bias.fill_(-0.2)
    s = torch.linspace(-2.0, 2.0, len(batch.labels)).double()
    z = (batch.ratings.double() - mean) / std
    by_hand = (batch.weights.double() * (0.7 * s - 0.2 - z) ** 2).sum() / batch.weights.sum()
    extra = head(batch)[0] - plain(batch)[0]
    assert extra.item() == pytest.approx(0.5 * by_hand.item(), rel=1e-5)


def test_head_without_a_rating_column_exits_2(tmp_path: Path, capsys):
    run = make_run(tmp_path / "run", n_rows=300)
    with pytest.raises(SystemExit) as e:
        main(["train", f"run_dir={run}", "rating_weight=0.3", "epochs=1", "batch_size=64"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "rating" in err and "train.rating_weight" in err, err


def test_negative_rating_weight_exits_2(tmp_path: Path, capsys):
    run = make_run(tmp_path / "run", n_rows=300)
    with pytest.raises(SystemExit) as e:
        main(["train", f"run_dir={run}", "rating_weight=-1", "epochs=1"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "train.rating_weight" in err, err
