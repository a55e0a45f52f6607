"""Evaluation scores rows without the InfoNCE terms, and its scores are the model's logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from dist_helpers import run_ranks
from synthetic import make_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("synthetic") / "run", n_rows=1500)


def _rank(rank: int, run_dir: str) -> dict:
    import trainer.model as model_mod
    from trainer.config import TrainConfig
    from trainer.data import eval_batches, make_batch, train_batches
    from trainer.distributed import init_distributed, shutdown
    from trainer.evaluation import EvalSpec, evaluate
    from trainer.main import build_model, read_variant_data

    env = init_distributed("cpu")
    try:
        cfg = TrainConfig(run_dir=run_dir, batch_size=128, eval_batch_size=64, extra_negatives=8, dropout=0.0)
        data = read_variant_data(cfg)
        dmp, _, _ = build_model(cfg, data, env, 1.0, "rowwise_adagrad")
        module = dmp.module
        calls = []
        real = model_mod.info_nce_terms_across_ranks

        def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
            calls.append(1)
            return real(*args, **kwargs)

        model_mod.info_nce_terms_across_ranks = counting
        batch = next(iter(train_batches(data, cfg.batch_size, 0, 1, 0, cfg.seed, False, 0, 0, 8)))
        with torch.no_grad():
            _, (_, _, _, _, train_parts) = dmp(batch)
        train_calls = len(calls)
        calls.clear()
        # eval batches carry no InfoNCE inputs
        eval_batch, _ = next(iter(eval_batches(data, "val", cfg.eval_batch_size, 0, 1)))
        pos_lengths = {k: v.shape[0] for k, v in eval_batch.vectors.items()}
        spec = EvalSpec("val", predictions=Path(run_dir) / "val_predictions.parquet")
        evaluate(dmp, data, spec, cfg.eval_batch_size, env, Path(run_dir))
        scored = pq.read_table(spec.predictions)
        labels, probs = scored.column("label").to_numpy(), scored.column("prob").to_numpy()
        eval_calls = len(calls)
        # the reference: one batch of every val row built WITH sampled positives (as
        # evaluation did before), through the model alone in eval mode
        split = data.read_rows("val")
        full = make_batch(data, split, np.arange(split.n), np.ones(split.n, bool), np.random.default_rng(0), True)
        dmp.eval()
        with torch.no_grad():
            logits, _ = module.model(full.dense, full.sparse, module.tower_input(full.content, full.vectors))
            _, (_, _, _, _, eval_parts) = dmp(full)
        return {
            "train_calls": train_calls, "train_parts": train_parts.tolist(), "eval_calls": eval_calls,
            "eval_parts": eval_parts.tolist(), "pos_ids": int((eval_batch.ii.pos_ids >= 0).sum() + (eval_batch.uu.pos_ids >= 0).sum()),
            "pos_lengths": {k: v for k, v in pos_lengths.items() if not k.endswith("/row")},
            "full_pos_ids": int((full.ii.pos_ids >= 0).sum()),
            "probs": probs, "labels": labels, "ref": torch.sigmoid(logits).numpy(), "ref_labels": split.label,
        }  # fmt: skip
    finally:
        shutdown(env)


def test_evaluate_computes_no_infonce_and_scores_the_models_logits(run_dir: Path):
    (r,) = run_ranks(_rank, 1, str(run_dir))
    # training computes both terms (in one call); evaluation neither (before: 2 calls per eval batch)
    assert r["train_calls"] == 1 and min(r["train_parts"][1:]) > 0
    assert r["eval_calls"] == 0
    assert r["eval_parts"][1:] == [0.0, 0.0] and r["eval_parts"][0] > 0  # BCE only
    # eval batches look up no positives or negatives; the reference batch did sample them
    assert r["pos_ids"] == 0 and set(r["pos_lengths"].values()) == {0}, r["pos_lengths"]
    assert r["full_pos_ids"] > 0
    np.testing.assert_array_equal(r["labels"], r["ref_labels"])
    np.testing.assert_allclose(r["probs"], r["ref"], rtol=0, atol=1e-6)
