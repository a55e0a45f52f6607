"""History bags read as content (`train.history_content`): a row's bag becomes the mean
of its members' content vectors, projected by the members' own tower, so a user's item
bag meets the item tower's space (the one item-item InfoNCE shapes)."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from synthetic import make_run
from test_history_tables import add_bag
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from dlrrec.config import ConfigError, DataError
from trainer.config import TrainConfig
from trainer.data import make_batch, pooled_bag
from trainer.main import read_variant_data
from trainer.model import DLRREC, ArchSizes, ProjectionArch

BAG = "user_pos_items"


@pytest.fixture(scope="module")
def bag_run(tmp_path_factory) -> Path:
    run = make_run(tmp_path_factory.mktemp("hc") / "run")
    add_bag(run)
    return run


def config(run: Path, **kw) -> TrainConfig:
    base = {"run_dir": str(run), "history_tables": "none", "history_content": [BAG], "contrastive": False}
    return TrainConfig(**{**base, **kw})


def test_the_bag_is_the_mean_of_its_members_item_vectors(bag_run: Path) -> None:
    data = read_variant_data(config(bag_run))
    item_tower = [c for _, c in data.towers].index("item_text")
    assert data.history_slots == [(BAG, item_tower)]
    assert BAG not in data.sparse_names  # history_tables: none
    assert data.tower_spec()[-1] == (BAG, f"{BAG}/row")
    split = data.read_rows("val")
    rows = np.arange(64)
    batch = make_batch(data, split, rows, np.ones(64, bool), None, False)
    got = batch.vectors[f"{BAG}/row"].numpy().astype(np.float64)
    # the reference: the entity table's vectors, averaged row by row
    items = pq.read_table(bag_run / "features" / "entities" / "items.parquet")
    vec = np.stack(items["item_text"].to_numpy(zero_copy_only=False)).astype(np.float64)
    offs, vals = split.multi[BAG]
    for r in rows:
        ids = vals[offs[r] : offs[r + 1]]
        want = vec[ids].mean(0) if ids.size else np.zeros(vec.shape[1])
        np.testing.assert_allclose(got[r], want, atol=2e-3)  # float16 in the batch
    assert (offs[rows + 1] - offs[rows] > 1).all()  # real means


def test_an_empty_bag_is_zero_and_a_repeated_member_counts_twice(bag_run: Path) -> None:
    data = read_variant_data(config(bag_run))
    store = data.entity_columns["item_text"]
    offsets, values = np.array([0, 0, 3, 4]), np.array([5, 5, 2, 7])  # bags: [], [5, 5, 2], [7]
    split = SimpleNamespace(multi={BAG: (offsets, values)})
    got = pooled_bag(store, split, BAG, np.array([1, 0, 2, 1])).astype(np.float64)  # type: ignore[arg-type]
    vec = store.read(np.arange(8)).astype(np.float64)
    want = [(2 * vec[5] + vec[2]) / 3, np.zeros(vec.shape[1]), vec[7], (2 * vec[5] + vec[2]) / 3]
    np.testing.assert_allclose(got, np.stack(want), atol=2e-3)
    assert not got[1].any()


def test_variants_without_towers_read_no_bag(bag_run: Path) -> None:
    data = read_variant_data(config(bag_run, variant="dlrm"))
    assert data.history_slots == [] and BAG not in data.sparse_names
    own = read_variant_data(config(bag_run, history_tables="own"))
    assert BAG in own.sparse_names and own.history_slots == [(BAG, 1)]


def test_a_slot_goes_through_its_source_tower_with_no_weights_of_its_own() -> None:
    torch.manual_seed(0)
    plain = ProjectionArch(2, 16, 8, 4, 0.0)
    shared = ProjectionArch(2, 16, 8, 4, 0.0, slots=(0, 1, 1))
    shared.load_state_dict(plain.state_dict())  # the same parameters, nothing more
    x = torch.rand(5, 3, 16)
    out = shared(x)
    for s, t in enumerate((0, 1, 1)):
        torch.testing.assert_close(out[:, s], plain.project_one(t, x[:, s]))
    out[:, 2].sum().backward()  # the slot trains tower 1 only
    grad = shared.weights[0].grad
    assert grad is not None and grad[0].abs().sum() == 0 and grad[1].abs().sum() > 0


def test_the_model_interacts_the_slot_and_keeps_the_tower_parameters() -> None:
    ebc = EmbeddingBagCollection(tables=[EmbeddingBagConfig(name="t", embedding_dim=4, num_embeddings=3,
                                                            feature_names=["f"])])  # fmt: skip
    sizes = ArchSizes(dense_arch=(8,), over_arch=(8,), tower_hidden=8, dropout=0.0)
    with_slot = DLRREC(ebc, 2, 2, 16, sizes, history_sources=(1,))
    without = DLRREC(ebc, 2, 2, 16, sizes)
    shapes = {k: v.shape for k, v in with_slot.projection_arch.state_dict().items()}
    assert shapes == {k: v.shape for k, v in without.projection_arch.state_dict().items()}
    # 1 dense + 1 sparse + 2 towers + 1 slot vectors: 10 pairs after the dense output's D
    assert with_slot.inter_arch.num_pairs == 10 and without.inter_arch.num_pairs == 6
    with pytest.raises(ValueError, match="history_sources"):
        DLRREC(ebc, 2, 2, 16, sizes, history_sources=(2,))


def test_a_bag_the_features_lack_or_without_a_member_tower_is_a_data_error(bag_run: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"_meta.json: train.history_content: no history bag 'nope'"):
        read_variant_data(config(bag_run, history_content=["nope"]))
    run = make_run(tmp_path / "run")
    add_bag(run, ids_of="user_id")  # a bag of users: their tower reads per-row profiles
    with pytest.raises(DataError, match=f"bag '{BAG}' lists users, which have no user tower over one vector"):
        read_variant_data(config(run))
    with pytest.raises(ConfigError, match="train.history_content: duplicates"):
        config(bag_run, history_content=[BAG, BAG]).validate()


def test_training_with_history_content_learns(bag_run: Path, tmp_path: Path) -> None:
    from trainer.main import run

    out = tmp_path / "run"
    shutil.copytree(bag_run / "features", out / "features")
    shutil.copytree(bag_run / "similarity", out / "similarity")
    report = run(
        TrainConfig(
            run_dir=str(out), batch_size=256, log_every=0, epochs=3, embedding_dim=8, sparse_lr=0.3,
            emb_l2=0.0, tensorboard=False, progress_bar=False, history_tables="none",
            history_content=[BAG], score_test=False,
        )
    )  # fmt: skip
    assert "t_user_pos_items" not in report["sharding_plan"]
    assert report["config"]["history_content"] == [BAG]
    assert report["val"]["auc"] > 0.75, report["val"]["auc"]
