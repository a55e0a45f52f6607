"""Initial embedding tables are a function of (seed, table, row): the same on 1 rank and 2."""

from pathlib import Path

import numpy as np
import pytest
import torch
from dist_helpers import run_ranks
from synthetic import make_run

from trainer.table_init import BLOCK_ROWS, fill_initial_rows, initial_block


def _initial_tables(rank: int, run_dir: str, device: str, row_wise: bool) -> dict:
    """This rank's shards of every id table right after `build_model`: {table: [(first, rows)]}."""
    import trainer.main as tm
    from trainer.config import TrainConfig
    from trainer.distributed import init_distributed, shutdown

    if row_wise:  # every id table split by rows over the ranks (this child process only;
        # fbgemm's CPU kernels shard an EmbeddingBagCollection table-wise only)
        allowed = tm.ParameterConstraints
        tm.ParameterConstraints = lambda sharding_types: allowed(sharding_types=["row_wise"])  # type: ignore
    env = init_distributed(device)
    try:
        data = tm.read_variant_data(TrainConfig(run_dir=run_dir))
        dmp, _, plan = tm.build_model(TrainConfig(run_dir=run_dir, seed=3), data, env, 1.0, "rowwise_adagrad")
        out: dict = {"plan": {k: v["sharding_type"] for k, v in tm.plan_summary(plan).items()}}
        for key, value in dmp.state_dict().items():
            if "embedding_bags." in key:
                out[key.split(".")[-2]] = [
                    (int(s.metadata.shard_offsets[0]), s.tensor.cpu().numpy().copy()) for s in value.local_shards()
                ]
        return out
    finally:
        shutdown(env)


def _whole(shards: list[list[tuple[int, np.ndarray]]]) -> torch.Tensor:
    parts = sorted(((first, torch.from_numpy(t)) for rank in shards for first, t in rank), key=lambda p: p[0])
    assert [f for f, _ in parts] == list(np.cumsum([0] + [t.shape[0] for _, t in parts[:-1]]))
    return torch.cat([t for _, t in parts])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("synthetic") / "run", n_users=61, n_items=41, n_rows=600)


def check_same_initial_tables(run_dir: Path, device: str, row_wise: bool) -> None:
    """1 rank vs 2 ranks: every id table gathered from its shards is the same tensor."""
    (one,) = run_ranks(_initial_tables, 1, str(run_dir), device, False)
    two = run_ranks(_initial_tables, 2, str(run_dir), device, row_wise)
    if row_wise:
        assert set(two[0]["plan"].values()) == {"row_wise"}, two[0]["plan"]
    tables = [k for k in one if k != "plan"]
    assert "t_user_id" in tables and "t_item_id" in tables
    for t in tables:
        a, b = _whole([one[t]]), _whole([two[0][t], two[1][t]])
        assert torch.equal(a, b), t
        bound = float(np.sqrt(1.0 / a.shape[0]))
        assert float(a.abs().max()) <= bound and float(a.std()) > bound / 4, t  # torchrec's range
        if row_wise:  # the two row-wise shards are not copies of each other (they were)
            (f0, s0), (f1, s1) = two[0][t][0], two[1][t][0]
            n = min(s0.shape[0], s1.shape[0])
            assert f0 != f1 and not np.array_equal(s0[:n], s1[:n]), t


@pytest.mark.slow
def test_tables_start_the_same_on_one_rank_and_two(run_dir: Path):
    # on CPU the tables are sharded table-wise: a table's rank drew other random numbers
    check_same_initial_tables(run_dir, "cpu", row_wise=False)


def test_rows_do_not_depend_on_where_a_shard_starts():
    dim, n = 4, 2 * BLOCK_ROWS + 10
    whole = torch.empty(n, dim)
    fill_initial_rows(whole, 0, 7, "t", low=-1.0, high=1.0)
    for first, size in ((0, 3), (BLOCK_ROWS - 2, 5), (BLOCK_ROWS + 1, BLOCK_ROWS + 9)):
        part = torch.empty(size, dim)
        fill_initial_rows(part, first, 7, "t", low=-1.0, high=1.0)
        assert torch.equal(part, whole[first : first + size])
    assert torch.equal(whole[:BLOCK_ROWS], initial_block(7, "t", 0, dim, low=-1.0, high=1.0))
    other = torch.empty(n, dim)
    fill_initial_rows(other, 0, 7, "u", low=-1.0, high=1.0)
    assert not torch.equal(other, whole)  # another table, other values


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_row_wise_cuda_tables_start_the_same_on_one_rank_and_two(run_dir: Path):
    # fbgemm's CUDA kernels shard an EmbeddingBagCollection row-wise: the shards were copies
    check_same_initial_tables(run_dir, "cuda", row_wise=True)
