"""The baseline variants (`train.variant`): each builds, trains and reports through the same path."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic import make_run
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from dlrrec.config import ConfigError, DataError
from trainer.config import TrainConfig
from trainer.model import BiasedMF


def test_biased_mf_score_is_dot_plus_biases():
    torch.manual_seed(0)
    d = 8  # 7 factor columns + the bias
    ebc = EmbeddingBagCollection(
        tables=[
            EmbeddingBagConfig(
                name="t_user_id", embedding_dim=d, num_embeddings=3, feature_names=["user_id"]
            ),
            EmbeddingBagConfig(
                name="t_item_id", embedding_dim=d, num_embeddings=5, feature_names=["item_id"]
            ),
        ]
    )
    mf = BiasedMF(ebc)
    with torch.no_grad():
        mf.global_bias.fill_(0.25)
    users, items = [2, 0, 1], [4, 4, 0]
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=["user_id", "item_id"],
        values=torch.tensor(users + items),
        lengths=torch.ones(6, dtype=torch.int32),
    )
    logits, emb = mf(torch.zeros(3, 0), kjt, torch.zeros(3, 0, 384))
    assert emb.shape == (3, 2, d)
    w_u = ebc.embedding_bags["t_user_id"].weight.detach().numpy().astype(np.float64)
    w_i = ebc.embedding_bags["t_item_id"].weight.detach().numpy().astype(np.float64)
    for row, (u, i) in enumerate(zip(users, items)):
        by_hand = (
            sum(w_u[u, k] * w_i[i, k] for k in range(d - 1)) + w_u[u, d - 1] + w_i[i, d - 1] + 0.25
        )
        assert logits[row].item() == pytest.approx(by_hand, abs=1e-5)


def test_biased_mf_refuses_other_features():
    ebc = EmbeddingBagCollection(
        tables=[
            EmbeddingBagConfig(
                name="t_user_id", embedding_dim=8, num_embeddings=3, feature_names=["user_id"]
            )
        ]
    )
    with pytest.raises(ValueError, match="user_id and item_id"):
        BiasedMF(ebc)


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("variants") / "run")


def _train(run_dir: Path, **overrides: object) -> dict:
    from trainer.main import run

    return run(TrainConfig(run_dir=str(run_dir), batch_size=256, log_every=0, **overrides))  # type: ignore[arg-type]


ALL_TABLES = {"t_user_id", "t_item_id", "t_categories", "t_gender"}
# (variant, tables in the plan, the entity-vector stores it reads, InfoNCE on, content
# towers on): item vectors for the item tower, user profiles only for the user-user InfoNCE
VARIANTS = [
    ("biased_mf", {"t_user_id", "t_item_id"}, set(), False, False),
    ("dlrm", ALL_TABLES, set(), False, False),
    ("dlrm_content", ALL_TABLES, {"item_text.f16"}, False, True),
    ("full", ALL_TABLES, {"item_text.f16", "user_text.f16"}, True, True),
]


@pytest.mark.parametrize(
    "variant,tables,stores,contrastive,content", VARIANTS, ids=[v[0] for v in VARIANTS]
)
def test_variant_trains_and_reports(
    synthetic_run: Path, tmp_path: Path, variant, tables, stores, contrastive, content
):
    run = tmp_path / "run"
    shutil.copytree(synthetic_run / "features", run / "features")
    if variant == "full":  # the others must not need the SWING tables
        shutil.copytree(synthetic_run / "similarity", run / "similarity")
    report = _train(run, variant=variant, epochs=3, embedding_dim=8, sparse_lr=0.3, emb_l2=0.0)
    assert set(report["sharding_plan"]) == tables
    assert {p.name for p in (run / "features" / "vectors").glob("*.f16")} == stores
    assert report["variant"]["model"] == variant
    assert report["variant"]["contrastive"] is contrastive
    assert report["variant"]["modalities"] == (["text"] if content else [])
    assert (report["losses"]["item_item"] > 0) is contrastive
    assert (report["losses"]["user_user"] > 0) is contrastive
    # selected on val, threshold from val, test scored: the planted preference is learnt
    assert 0 <= report["best_epoch"] < 3
    assert 0.0 < report["val"]["threshold"] < 1.0
    assert report["test"]["auc"] > 0.8, report["test"]
    assert np.isfinite(report["test"]["logloss"])
    from trainer.checkpoint import latest_checkpoint

    assert latest_checkpoint(run / "train" / "checkpoints") is not None
    meta = (run / "train" / "config.yaml").read_text()
    assert f"variant: {variant}" in meta


def test_full_model_without_swing_tables_names_the_folder(synthetic_run: Path, tmp_path: Path):
    run = tmp_path / "run"
    shutil.copytree(synthetic_run / "features", run / "features")
    with pytest.raises(DataError, match="similarity"):
        _train(run, variant="full", epochs=1, max_steps_per_epoch=1)


def test_unknown_variant_is_a_config_error():
    from dlrrec.config import build_dataclass

    with pytest.raises(ConfigError, match="variant"):
        build_dataclass(TrainConfig, {"run_dir": "x", "variant": "mf"}, "train")
