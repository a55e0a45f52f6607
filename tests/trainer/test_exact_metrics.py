"""Split metrics are exact across ranks: 2 real gloo ranks report what 1 process does.

Each rank scores its share of the split in padded eval batches and spills it to disk by
score bucket and by user bucket (`trainer.evaluation.evaluate`); the ranks count the
buckets between them. The scorer is a fixed per-row function, so any difference could
only come from the distribution (row assignment, padding, spilling, the buckets each
rank counts), which is what is under test. Tiny spill limits (many flushes and user
buckets) must give the same numbers as the defaults.
"""

import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from dist_helpers import run_ranks
from ranking_reference import ranking_reference
from synthetic import make_run
from torch import nn

SPLITS = ("val", "test")


class RowScorer(nn.Module):
    """Logit from elementwise ops on one row's own inputs (no batch-size-dependent kernels);
    rounded to create many tied scores. `items`: the item vectors [n_items, C] (the model
    looks them up in its sharded tables; this scorer has them in memory)."""

    def __init__(self, items: torch.Tensor) -> None:
        super().__init__()
        self.items = items

    def forward(self, batch):  # noqa: ANN001 - a Batch, as DLRRECTrain gets
        u, i = batch.content[:, 0], self.items[batch.item_ids]  # user profile, item vector
        # the planted preference lives in the first 4 content dims (tests/trainer/synthetic.py)
        x = 40.0 * (u[:, 0] * i[:, 0] + u[:, 1] * i[:, 1] + u[:, 2] * i[:, 2] + u[:, 3] * i[:, 3])
        x = x + 0.1 * batch.dense[:, 0] + 0.01 * (batch.user_ids % 7).to(x.dtype)
        logits = torch.round(x * 4) / 4
        return logits, (logits, logits, batch.labels, batch.weights, logits)


def _metrics(rank: int, run_dir: str) -> dict:
    from trainer.data import read_training_data
    from trainer.distributed import barrier, init_distributed, shutdown
    from trainer.evaluation import EvalSpec, evaluate

    env = init_distributed("cpu")
    try:
        data = read_training_data(run_dir, ["text"], contrastive=False)
        # Local eval batches of 128 (1 rank) and 64 (2 ranks): multiples of every SIMD width
        # x unroll, so each row takes the vectorised path of torch's elementwise kernels;
        # a row in a kernel's scalar tail loop gets a sigmoid that differs in the last bit.
        # The splits' row counts are not multiples of 128, so padding is still exercised.
        eval_batch_size = 128
        out = {}
        items = data.entity_columns["item_text"]
        scorer = RowScorer(torch.from_numpy(items.read(np.arange(items.n))).float())
        work = Path(run_dir) / f"eval-{env.world_size}"
        work.mkdir(exist_ok=True)

        def run(split: str, thresholds: tuple[float, ...], **limits: int) -> dict:
            # K = 3 as well: most synthetic users have fewer than 10 rows in a split
            spec = EvalSpec(split, thresholds, 0.5, (3, 10), work / f"{split}.parquet", **limits)
            ev = evaluate(scorer, data, spec, eval_batch_size, env, work)  # type: ignore[arg-type]
            probs = pq.read_table(spec.predictions).column("prob").to_numpy()
            return {**ev.summary.report(thresholds[0]), **ev.ranking, "probs": probs.tolist(),
                    "fpr_at_recall_0.5": ev.summary.fpr_at_recall()}  # fmt: skip

        v = evaluate(scorer, data, EvalSpec("val", (), ks=()), eval_batch_size, env, work)  # type: ignore[arg-type]
        threshold = v.summary.best_accuracy_threshold()
        for split in SPLITS:
            out[split] = run(split, (threshold,))
            out[split]["tiny"] = run(split, (threshold,), flush_rows=7, user_bucket_rows=50)
        barrier()
        out["left"] = sorted(os.listdir(work))  # no spill folder or prediction part left
        return out
    finally:
        shutdown(env)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("synthetic") / "run", n_rows=3001)


@pytest.fixture(scope="module")
def one(run_dir: Path) -> dict:
    return run_ranks(_metrics, 1, str(run_dir))[0]


@pytest.mark.slow  # ~70 s on the loaded 2-core machine (3 spawned ranks), ~20 s when idle
def test_two_ranks_give_the_metrics_of_one_process(run_dir: Path, one: dict):
    two = run_ranks(_metrics, 2, str(run_dir))
    assert two[0] == two[1]  # every rank holds the same numbers
    assert one["left"] == two[0]["left"] == ["test.parquet", "val.parquet"]
    for split in SPLITS:
        got, want = two[0][split], one[split]
        for key in ("auc", "logloss", "ne", "accuracy", "fpr", "precision", "recall", "calibration",
                    "threshold", "n", "fpr_at_recall_0.5", "probs",
                    "gauc", "gauc_users", "ndcg@10", "recall@10", "ndcg@3", "recall@3", "ranking_users"):  # fmt: skip
            assert got[key] == want[key], (split, key, got[key], want[key])
        assert 0.5 < want["auc"] < 1 and 0 < want["fpr"] < 1
        assert 0.5 < want["gauc"] < 1 and 0 < want["ndcg@10"] < 1 and 0 < want["recall@3"] < 1
        # 7-row flushes and 50-row user buckets: the same split metrics; the per-user sums
        # add up in another grouping, so to the last bits
        for key, value in want["tiny"].items():
            assert value == (pytest.approx(want[key], abs=1e-12) if "@" in key or key == "gauc" else want[key]), key


@pytest.mark.slow  # ~40 s on the loaded 2-core machine (1 spawned rank; shares it with the test above)
def test_split_metrics_agree_with_torchmetrics(run_dir: Path, one: dict):
    """An independent implementation (torchmetrics' AUROC, direct counts) on the gathered predictions."""
    from torchmetrics.functional.classification import binary_auroc

    from trainer.data import read_training_data

    data = read_training_data(run_dir, ["text"], contrastive=False)
    for split in SPLITS:
        labels = torch.from_numpy(data.read_rows(split).label).long()
        probs = torch.tensor(one[split]["probs"], dtype=torch.float64)
        assert one[split]["auc"] == pytest.approx(float(binary_auroc(probs, labels)), abs=1e-6)
        eps = 1e-7
        p = probs.clamp(eps, 1 - eps)
        ll = float(-(labels * p.log() + (1 - labels) * (1 - p).log()).mean())
        assert one[split]["logloss"] == pytest.approx(ll, rel=1e-12)
        pred = probs >= one[split]["threshold"]
        y = labels.bool()
        tp, fp = int((pred & y).sum()), int((pred & ~y).sum())
        tn, fn = int((~pred & ~y).sum()), int((~pred & y).sum())
        assert one[split]["accuracy"] == (tp + tn) / len(y)
        assert one[split]["fpr"] == fp / (fp + tn)
        assert one[split]["precision"] == tp / (tp + fp)
        assert one[split]["recall"] == tp / (tp + fn)
        assert one[split]["calibration"] == pytest.approx(float(probs.mean() / y.double().mean()), rel=1e-12)
        assert np.isfinite(one[split]["ne"])
        # per-user ranking metrics: the plain-loop reference (ranking_reference.py)
        users = data.read_rows(split).user_id.tolist()
        for k in (3, 10):
            ref = ranking_reference(users, labels.tolist(), one[split]["probs"], k)
            for key, want in ref.items():
                assert one[split][key] == pytest.approx(want, abs=1e-12), (split, k, key)
