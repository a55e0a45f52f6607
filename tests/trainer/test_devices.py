"""The device-dependent parts of the trainer, checked on CPU: the fused optimizers'
arguments, `auto`, the fingerprint and the resume refusal across devices."""

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from dist_helpers import devices
from synthetic import make_run
from test_train_errors import _fail
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

from dlrrec.config import ConfigError
from trainer.checkpoint import METADATA_FILE, STATE_FILE, STATE_VERSION
from trainer.config import TrainConfig
from trainer.main import (
    SPARSE_OPTIMIZERS,
    find_resume_point,
    fingerprint,
    resolve_sparse_optimizer,
    sparse_optimizer_kwargs,
)

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


@pytest.mark.parametrize("name", sorted(SPARSE_OPTIMIZERS))
def test_sparse_weight_decay_reaches_fbgemm_or_is_refused(name: str):
    # torch.optim's classes raised TypeError on fbgemm's `weight_decay_mode`
    with pytest.raises(ConfigError, match="train.sparse_weight_decay: fbgemm's CPU kernels ignore it"):
        sparse_optimizer_kwargs(name, CPU, lr=0.1, weight_decay=0.01)
    assert sparse_optimizer_kwargs(name, CPU, lr=0.1, weight_decay=0.0)["lr"] == 0.1
    try:
        kwargs = sparse_optimizer_kwargs(name, CUDA, lr=0.1, weight_decay=0.01)
    except ConfigError as e:
        assert name in ("adagrad", "sgd") and f"fused {name} has none" in str(e)
        return
    assert kwargs["weight_decay"] == 0.01
    # L2 for row-wise Adagrad; fbgemm's Adam always decouples (no mode to pass)
    assert ("weight_decay_mode" in kwargs) == (name == "rowwise_adagrad")
    p = torch.nn.Parameter(torch.zeros(4, 4))
    apply_optimizer_in_backward(SPARSE_OPTIMIZERS[name], [p], kwargs)
    assert p._optimizer_kwargs == [kwargs]  # type: ignore[attr-defined]


def test_weight_decay_with_an_optimizer_that_has_none_is_one_line(tmp_path: Path, capsys):
    run = make_run(tmp_path / "run", n_rows=400)
    err = _fail(["train", f"run_dir={run}", "batch_size=64", "epochs=1", "device=cpu",
                 "sparse_optimizer=adagrad", "sparse_weight_decay=0.01"], capsys)  # fmt: skip
    assert "train.sparse_weight_decay" in err and "emb_l2" in err, err
    assert not (run / "train").exists()


def test_auto_is_rowwise_adagrad_on_every_device():
    assert resolve_sparse_optimizer("auto", CPU) == resolve_sparse_optimizer("auto", CUDA) == "rowwise_adagrad"
    assert resolve_sparse_optimizer("adam", CUDA) == "adam"
    with pytest.raises(ConfigError, match="train.sparse_optimizer"):
        resolve_sparse_optimizer("adam", CPU)


def test_fingerprint_names_device_and_resolved_optimizer():
    cfg = TrainConfig(run_dir="r")
    data = SimpleNamespace(features_meta={"fingerprint": "f"}, similarity_meta={"fingerprint": "s"})
    on = [
        {"device": "cpu", "sparse_optimizer": "rowwise_adagrad"},
        {"device": "cuda", "sparse_optimizer": "rowwise_adagrad"},
        {"device": "cuda", "sparse_optimizer": "adam"},
    ]
    fps = {fingerprint(cfg, data, t) for t in on}  # type: ignore[arg-type]
    assert len(fps) == 3


def _fake_checkpoint(out: Path, state: dict) -> Path:
    ckpt = out / "checkpoints" / "step_00000004"
    ckpt.mkdir(parents=True)
    (ckpt / METADATA_FILE).write_bytes(b"")
    (ckpt / STATE_FILE).write_text(json.dumps({**state, "version": STATE_VERSION}))
    return ckpt


def test_resume_across_devices_is_refused_naming_them(tmp_path: Path):
    cpu = {"device": "cpu", "sparse_optimizer": "rowwise_adagrad"}
    cuda = {"device": "cuda", "sparse_optimizer": "adam"}
    ckpt = _fake_checkpoint(tmp_path / "train", {"fingerprint": "fp-cuda", **cuda})
    with pytest.raises(ConfigError) as e:
        find_resume_point(tmp_path / "train", "fp-cpu", cpu, fresh=False)
    msg = str(e.value)
    assert "\n" not in msg and str(ckpt) in msg
    assert "device=cuda sparse_optimizer=adam" in msg and "device=cpu sparse_optimizer=rowwise_adagrad" in msg
    assert find_resume_point(tmp_path / "train", "fp-cuda", cuda, fresh=False) == ckpt


def test_more_ranks_than_gpus_is_one_line_naming_both():
    from trainer.distributed import check_ranks_per_gpu

    check_ranks_per_gpu(2, 2)
    with pytest.raises(ConfigError) as e:
        check_ranks_per_gpu(2, 1)
    assert "nproc_per_node=2" in str(e.value) and "1 GPU" in str(e.value)


def test_more_ranks_than_gpus_from_the_cli(tmp_path: Path, capsys, monkeypatch):
    # rank 0 of `-j 1x2` on a node with one GPU: refused before set_device or any collective
    run = make_run(tmp_path / "run", n_rows=400)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(k, v)
    err = _fail(["train", f"run_dir={run}", "batch_size=64", "epochs=1"], capsys)
    assert "nproc_per_node=2" in err and "1 GPU" in err, err
    assert not (run / "train").exists()


@pytest.mark.parametrize("device", devices(1))
def test_planner_topology_is_the_real_device(device: str):
    from trainer.main import planner_topology

    dev = torch.device(device, 0) if device == "cuda" else torch.device("cpu")
    topo = planner_topology(4, dev, 2)
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert (topo.world_size, topo.local_world_size, topo.compute_device) == (4, 2, device)
    assert all(d.storage.ddr == host // 2 for d in topo.devices)  # each rank's share of the host
    if device == "cuda":  # was torchrec's 32 GB constant whatever the GPU
        assert all(d.storage.hbm == torch.cuda.get_device_properties(0).total_memory for d in topo.devices)


def _row_after_one_step(rank: int, device: str, kwargs: dict) -> list:
    """One fused row-wise Adagrad step (`kwargs`) on a 1-rank table-wise sharded table,
    every gradient 1: (row 1 before, row 1 after)."""
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.planner import EmbeddingShardingPlanner
    from torchrec.distributed.planner.types import ParameterConstraints
    from torchrec.modules.embedding_configs import EmbeddingBagConfig
    from torchrec.modules.embedding_modules import EmbeddingBagCollection
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    from trainer.distributed import init_distributed, shutdown
    from trainer.main import planner_topology

    env = init_distributed(device)
    try:
        torch.manual_seed(0)
        table = EmbeddingBagConfig(name="t", embedding_dim=8, num_embeddings=4, feature_names=["f"])
        ebc = EmbeddingBagCollection(tables=[table], device=torch.device("meta"))
        apply_optimizer_in_backward(SPARSE_OPTIMIZERS["rowwise_adagrad"], ebc.parameters(), kwargs)
        constraints = {"t": ParameterConstraints(sharding_types=["table_wise"])}  # as build_model
        planner = EmbeddingShardingPlanner(topology=planner_topology(1, env.device, 1), constraints=constraints)
        plan = planner.collective_plan(ebc, None, torch.distributed.GroupMember.WORLD)
        dmp = DistributedModelParallel(ebc, device=env.device, plan=plan)
        (weight,) = [v for k, v in dmp.state_dict().items() if k.endswith("t.weight")]
        w = weight.local_shards()[0].tensor
        before = w[1].cpu().clone()
        kjt = KeyedJaggedTensor.from_lengths_sync(["f"], torch.tensor([1]), torch.tensor([1])).to(env.device)
        dmp(kjt).values().sum().backward()
        return [before.numpy(), w[1].cpu().clone().numpy()]
    finally:
        shutdown(env)


def test_fbgemm_cpu_row_wise_adagrad_ignores_weight_decay():
    # why sparse_weight_decay is refused on CPU: the kernel gets weight_decay and the L2
    # mode and steps exactly as without them (if this fails, fbgemm honours it now)
    import numpy as np
    from dist_helpers import run_ranks
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import WeightDecayMode

    plain, decayed = (
        run_ranks(_row_after_one_step, 1, "cpu", {"lr": 0.1, **wd})[0]
        for wd in ({}, {"weight_decay": 0.5, "weight_decay_mode": WeightDecayMode.L2})
    )
    assert np.array_equal(plain[0], decayed[0]) and not np.array_equal(plain[0], plain[1])
    assert np.array_equal(plain[1], decayed[1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sparse_weight_decay_is_l2_in_cuda_row_wise_adagrad():
    import numpy as np
    from dist_helpers import run_ranks

    kwargs = sparse_optimizer_kwargs("rowwise_adagrad", CUDA, lr=0.1, weight_decay=0.5)
    (before, after) = run_ranks(_row_after_one_step, 1, "cuda", kwargs)[0]
    # L2: g = 1 + wd * w; the row's Adagrad state is mean(g^2); w <- w - lr * g / (sqrt(state) + eps)
    g = 1.0 + 0.5 * before.astype(np.float64)
    expected = before - 0.1 * g / (np.sqrt(np.mean(g**2)) + 1e-8)
    np.testing.assert_allclose(after, expected, rtol=1e-5, atol=1e-6)
