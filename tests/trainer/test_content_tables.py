"""Frozen entity vectors as row-wise sharded FP16 TorchRec tables (trainer/content_tables.py).

On 2 real gloo ranks: each rank holds and fills only its shard's rows; lookups of random
ids equal the Parquet vectors; the loss equals the loss computed from vectors gathered
directly from the Parquet files; training steps leave the tables' bytes unchanged; and
checkpoints hold none of them.
"""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from dist_helpers import devices, run_ranks
from synthetic import make_run

from trainer.content_tables import ParquetColumn

C = 8


def _vectors(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, C)).astype(np.float16)
    v[::7] = 0  # entities without content
    return v


def test_row_ranges_of_an_unsorted_multi_group_file(tmp_path: Path):
    n = 100
    vec = _vectors(n, 0)
    present = np.random.default_rng(1).permutation(n)[:90]  # 10 ids absent from the file
    path = tmp_path / "items.parquet"
    table = pa.table(
        {
            "item_id": pa.array(present, pa.int64()),
            "item_text": pa.FixedSizeListArray.from_arrays(pa.array(vec[present].reshape(-1)), C),
        }
    )
    pq.write_table(table, path, row_group_size=16)  # 6 row groups, ids in random order
    col = ParquetColumn.scan(path, "item", "item_text", n, C)
    want = np.zeros_like(vec)
    want[present] = vec[present]
    np.testing.assert_array_equal(col.has_content, np.abs(want).max(1) > 0)
    for lo, hi in ((0, 100), (0, 51), (51, 100), (13, 14), (40, 40), (99, 100)):
        got = col.read_rows(lo, hi)
        assert got.dtype == np.float16 and got.shape == (hi - lo, C)
        np.testing.assert_array_equal(got, want[lo:hi])


def test_sorted_file_reads_only_overlapping_row_groups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    n = 64
    vec = _vectors(n, 2)
    path = tmp_path / "users.parquet"
    table = pa.table(
        {
            "user_id": pa.array(np.arange(n), pa.int64()),
            "user_text": pa.FixedSizeListArray.from_arrays(pa.array(vec.reshape(-1)), C),
        }
    )
    pq.write_table(table, path, row_group_size=16)
    col = ParquetColumn.scan(path, "user", "user_text", n, C)
    seen: list[list[int]] = []
    real = pq.ParquetFile.iter_batches

    def spy(self, *args, **kwargs):  # noqa: ANN001, ANN202
        seen.append(list(kwargs.get("row_groups") or []))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    np.testing.assert_array_equal(col.read_rows(20, 40), vec[20:40])
    assert seen == [[1], [2]]  # rows 16..47 of 0..63: not the first or last group, one at a time


def _sharded(rank: int, run_dir: str, device: str = "cpu") -> dict:
    """One rank: build the real model, check shards, lookups, loss, frozenness, checkpoint."""
    from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

    from trainer.checkpoint import read_metadata_safely, save_checkpoint
    from trainer.config import TrainConfig
    from trainer.content_tables import feature_key, local_shards
    from trainer.distributed import init_distributed, shutdown
    from trainer.main import build_model, read_variant_data
    from trainer.model import DLRRECTrain

    env = init_distributed(device)
    dev = env.device
    try:
        cfg = TrainConfig(run_dir=run_dir, batch_size=128, extra_negatives=8, dropout=0.0, device=device)
        data = read_variant_data(cfg)
        dmp, optimizer, _ = build_model(cfg, data, env, 1.0, "rowwise_adagrad")
        module = dmp.module
        assert isinstance(module, DLRRECTrain)
        # the test's independent reference: whole Parquet columns, read directly
        full = {}
        for entity, col in data.towers:
            t = pq.read_table(Path(run_dir) / "features" / "entities" / f"{entity}s.parquet")
            ref = np.zeros((data.entity_columns[col].n, 384), np.float32)
            ids = t.column(f"{entity}_id").to_numpy()
            ref[ids] = np.stack(t.column(col).to_numpy(zero_copy_only=False)).astype(np.float16)
            full[col] = torch.from_numpy(ref)
        shards = local_shards(dmp)
        out: dict = {"rows": {}, "bytes": 0}
        for col, parts in shards.items():
            ((first, weight),) = parts
            assert weight.dtype == torch.float16
            torch.testing.assert_close(
                weight.float().cpu(), full[col][first : first + weight.shape[0]], rtol=0, atol=0
            )
            out["rows"][col] = (first, weight.shape[0])
            out["bytes"] += weight.numel() * weight.element_size()
        # lookups of random ids (the same on every rank) equal the Parquet vectors
        from trainer.content_tables import entity_kjt

        rng = np.random.default_rng(5)
        b = 32
        ids = {}
        for col, ref in full.items():
            n = ref.shape[0]
            ids.update({feature_key(col, "row"): rng.integers(0, n, b), feature_key(col, "pos"): rng.integers(0, n, b),
                        feature_key(col, "neg"): rng.integers(0, n, 5)})  # fmt: skip
        vec = module.content_tables(entity_kjt(list(full), ids, b).to(dev))
        for key, v in ids.items():
            assert torch.equal(vec[key].cpu(), full[key.split("/")[0]][torch.from_numpy(v)]), key
            assert not vec[key].requires_grad
        # a training batch: the loss from the sharded tables equals the loss from vectors
        # gathered from the Parquet by the batch's id fields (tower order: user_text per
        # row from the examples, item_text from its table)
        from trainer.data import train_batches

        batch = next(train_batches(data, 128, env.rank, env.world_size, 0, 0, False, 0, 0, 8))
        assert [c for c, _ in module.tower_spec] == ["user_text", "item_text"]
        content = torch.stack([batch.content[:, 0], full["item_text"][batch.item_ids]], 1).to(dev)
        ref_vec = {
            "item_text/pos": full["item_text"][batch.ii.pos_ids.clamp_min(0)],
            "item_text/neg": full["item_text"][batch.ii.neg_ids],
            "user_text/row": full["user_text"][batch.user_ids],
            "user_text/pos": full["user_text"][batch.uu.pos_ids.clamp_min(0)],
            "user_text/neg": full["user_text"][batch.uu.neg_ids],
        }
        ref_vec = {k: v.to(dev) for k, v in ref_vec.items()}
        batch = batch.to(dev)
        with torch.no_grad():
            loss, (_, logits, _, _, parts) = dmp(batch)
            ref_loss, (_, ref_logits, _, _, ref_parts) = module.loss(batch, content, ref_vec)
        assert torch.equal(logits, ref_logits) and torch.equal(parts, ref_parts)
        assert float(loss) == float(ref_loss) and float(parts[1]) > 0 and float(parts[2]) > 0
        out["loss"] = float(loss)
        # frozen: several pipelined training steps change the id tables, never the content tables
        before = {c: p[0][1].clone() for c, p in shards.items()}
        ids_before = {k: v.local_shards()[0].tensor.clone() for k, v in dmp.state_dict().items()
                      if "embedding_bags." in k and v.local_shards()}  # fmt: skip
        pipeline = TrainPipelineSparseDist(dmp, optimizer, env.device, execute_all_batches=True)
        it = train_batches(data, 128, env.rank, env.world_size, 0, 0, False, 4, 0, 8)
        losses = []
        while True:
            try:
                losses.append(float(pipeline.progress(it)[0]))
            except StopIteration:
                break
        assert len(losses) == 4
        for c, p in local_shards(dmp).items():
            assert torch.equal(p[0][1].view(torch.int16), before[c].view(torch.int16)), c
        sd = dmp.state_dict()
        changed = [
            not torch.equal(sd[k].local_shards()[0].tensor, v) for k, v in ids_before.items()
        ]
        assert not changed or any(changed)  # the id tables this rank holds did train
        # checkpoints hold no content table
        ckpt = save_checkpoint(Path(run_dir) / "ckpt", 4, dmp, optimizer, {}, env.is_main)
        keys = list(read_metadata_safely(ckpt).state_dict_metadata)
        assert any("t_item_id" in k for k in keys) and not any("content" in k for k in keys), keys
        return out
    finally:
        shutdown(env)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("synthetic") / "run", n_users=61, n_items=41)


@pytest.mark.parametrize("device", devices(2))
def test_two_ranks_hold_and_fill_only_their_rows(run_dir: Path, device: str):
    r0, r1 = run_ranks(_sharded, 2, str(run_dir), device)
    for col, n in (("user_text", 61), ("item_text", 41)):
        (a0, n0), (a1, n1) = r0["rows"][col], r1["rows"][col]
        assert a0 == 0 and a1 == n0 and n0 + n1 == n and 0 < n1 <= n0  # disjoint halves
    assert r0["bytes"] == (r0["rows"]["user_text"][1] + r0["rows"]["item_text"][1]) * 384 * 2
