"""Frozen entity vectors in disk-backed stores read per batch (trainer/vector_store.py).

Lookups of random ids equal the Parquet column read whole with pyarrow (the slow
reference); a read touches only the requested rows and the process holds no [n, C]
array (its RSS stays flat while it reads every row of a store many times larger than
a batch); a foreign or stale store is refused with one line and exit code 2; and on 2
real gloo ranks each rank's batches carry the Parquet vectors, the loss equals the loss
computed from them, and checkpoints hold no entity vectors.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from dist_helpers import devices, run_ranks
from synthetic import make_run

from dlrrec.config import DataError
from launch.cli import main
from trainer import neighbor_store, vector_store
from trainer.vector_store import VectorStore, open_store, store_header, write_store

C = 8


def _vectors(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, C)).astype(np.float16)
    v[::7] = 0  # entities without content
    return v


def _reference(source: Path, id_col: str, col: str, n: int) -> np.ndarray:
    """The slow reference: the whole column read with pyarrow, rows placed by id."""
    t = pq.read_table(source, columns=[id_col, col])
    ref = np.zeros((n, C), np.float16)
    ref[t.column(id_col).to_numpy()] = np.stack(t.column(col).to_numpy(zero_copy_only=False))
    return ref


def _write_unsorted(folder: Path, n: int, parts: int) -> tuple[Path, np.ndarray]:
    """`parts` Parquet files (a folder when > 1) of 90% of n ids in random order, 16-row groups."""
    vec = _vectors(n, 0)
    present = np.random.default_rng(1).permutation(n)[: n * 9 // 10]
    source = folder / "items.parquet" if parts == 1 else folder / "keyed"
    files = [source] if parts == 1 else [source / f"part-{p:05d}.parquet" for p in range(parts)]
    source.parent.mkdir(parents=True, exist_ok=True)
    if parts > 1:
        source.mkdir()
    for f, ids in zip(files, np.array_split(present, parts)):
        col = pa.FixedSizeListArray.from_arrays(pa.array(vec[ids].reshape(-1)), C)
        pq.write_table(pa.table({"item_id": pa.array(ids, pa.int64()), "item_text": col}), f, row_group_size=16)
    return source, vec


@pytest.mark.parametrize("parts", [1, 3])
def test_lookups_equal_the_parquet_column(tmp_path: Path, parts: int):
    n = 100
    source, _ = _write_unsorted(tmp_path, n, parts)
    store = open_store(tmp_path, "fp", "item_text", source, "item_id", "item_text", n, C)
    ref = _reference(source, "item_id", "item_text", n)
    np.testing.assert_array_equal(store.has_content, np.abs(ref).max(1) > 0)
    rng = np.random.default_rng(2)
    for ids in (rng.integers(0, n, 37), np.arange(n), np.array([99, 0, 99, 5]), np.zeros(0, np.int64)):
        got = store.read(ids)
        assert got.dtype == np.float16 and got.shape == (ids.size, C)
        np.testing.assert_array_equal(got, ref[ids])
    with pytest.raises(ValueError, match="outside"):
        store.read(np.array([n]))
    # a second open reads the same file (no rewrite)
    mtime = (tmp_path / "vectors" / "item_text.f16").stat().st_mtime_ns
    again = open_store(tmp_path, "fp", "item_text", source, "item_id", "item_text", n, C)
    np.testing.assert_array_equal(again.read(np.arange(n)), ref)
    assert (tmp_path / "vectors" / "item_text.f16").stat().st_mtime_ns == mtime


def test_a_read_fetches_only_the_requested_rows(tmp_path: Path, read_ranges: list[tuple[int, int]]):
    n = 1000
    source, _ = _write_unsorted(tmp_path, n, 1)
    store = open_store(tmp_path, "fp", "item_text", source, "item_id", "item_text", n, C)
    got = store.read(np.array([500, 3, 4, 5, 501, 900, 3]))
    rb = C * 2
    assert sorted(read_ranges) == [(vector_store.HEADER_BYTES + i * rb, rb) for i in (3, 4, 5, 500, 501, 900)]
    np.testing.assert_array_equal(got[1], got[6])  # a repeated id reads once, lands twice


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_memory_stays_bounded_while_reading_a_large_store(tmp_path: Path):
    """Every row of a 96 MiB store, read 1,024 ids at a time: the process RSS grows by
    far less than the store (pread pages stay in the page cache; an np.memmap gather
    would count every touched page)."""
    n, dim = 131072, 384
    rng = np.random.default_rng(3)
    header = store_header("fp", "big", n, dim, None)
    path = tmp_path / "big.f16"

    def batches():
        for lo in range(0, n, 8192):
            yield np.arange(lo, lo + 8192), rng.normal(size=(8192, dim)).astype(np.float16)

    write_store(path, batches(), header)
    store = VectorStore(path, header)
    store.read(np.arange(1024))  # warm-up: allocator arenas
    before = _rss_kib()
    checksum = 0.0
    for lo in range(0, n, 1024):
        checksum += float(store.read(rng.permutation(np.arange(lo, lo + 1024)))[:, 0].astype(np.float32).sum())
    grown_mib = (_rss_kib() - before) / 1024
    assert path.stat().st_size > 96 * 2**20 and np.isfinite(checksum)
    assert grown_mib < 16, f"RSS grew {grown_mib:.1f} MiB while reading a 96 MiB store"


def test_foreign_and_stale_stores_are_refused(tmp_path: Path):
    n = 50
    source, _ = _write_unsorted(tmp_path, n, 1)
    open_store(tmp_path, "fp-a", "item_text", source, "item_id", "item_text", n, C)
    with pytest.raises(DataError, match=r"foreign store \(fingerprint fp-a, this artifact's is fp-b"):
        open_store(tmp_path, "fp-b", "item_text", source, "item_id", "item_text", n, C)
    with pytest.raises(DataError, match=r"foreign store \(n 50"):
        open_store(tmp_path, "fp-a", "item_text", source, "item_id", "item_text", n + 1, C)
    st = source.stat()
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the Parquet rewritten later
    with pytest.raises(DataError, match="stale store"):
        open_store(tmp_path, "fp-a", "item_text", source, "item_id", "item_text", n, C)


def test_train_refuses_a_foreign_store_in_one_line(tmp_path: Path, capsys):
    run = make_run(tmp_path / "run", n_rows=600)
    store = run / "features" / "vectors" / "item_text.f16"
    store.parent.mkdir()
    items = run / "features" / "entities" / "items.parquet"
    write_store(store, iter([]), store_header("another-build", "item_text", 40, 384, items))
    with pytest.raises(SystemExit) as e:
        main(["train", f"run_dir={run}", "batch_size=64", "epochs=1"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(store) in err and "foreign store" in err, err
    assert not (run / "train" / "report.json").exists()


def _two_ranks(rank: int, run_dir: str, device: str = "cpu") -> dict:
    """One rank: batches carry the Parquet vectors; the loss is the reference loss; the
    model holds no entity vectors and checkpoints none."""
    from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

    from trainer.checkpoint import read_metadata_safely, save_checkpoint
    from trainer.config import TrainConfig
    from trainer.data import train_batches
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
        full = {}
        for entity, col in data.towers:
            t = pq.read_table(Path(run_dir) / "features" / "entities" / f"{entity}s.parquet")
            ref = np.zeros((data.entity_columns[col].n, 384), np.float16)
            ref[t.column(f"{entity}_id").to_numpy()] = np.stack(t.column(col).to_numpy(zero_copy_only=False))
            full[col] = torch.from_numpy(ref)
        batch = next(train_batches(data, 128, env.rank, env.world_size, 0, 0, False, 0, 0, 8))
        ref_vec = {
            "item_text/row": full["item_text"][batch.item_ids],
            "item_text/pos": full["item_text"][batch.ii.pos_ids.clamp_min(0)],
            "item_text/neg": full["item_text"][batch.ii.neg_ids],
            "user_text/row": full["user_text"][batch.user_ids],
            "user_text/pos": full["user_text"][batch.uu.pos_ids.clamp_min(0)],
            "user_text/neg": full["user_text"][batch.uu.neg_ids],
        }
        for k, v in ref_vec.items():
            assert batch.vectors[k].dtype == torch.float16 and torch.equal(batch.vectors[k], v), k
        assert [c for c, _ in module.tower_spec] == ["user_text", "item_text"]
        content = torch.stack([batch.content[:, 0], full["item_text"][batch.item_ids].float()], 1).to(dev)
        batch = batch.to(dev)
        with torch.no_grad():
            loss, (_, logits, _, _, parts) = dmp(batch)
            ref_loss, (_, ref_logits, _, _, ref_parts) = module.loss(
                batch, content, {k: v.float().to(dev) for k, v in ref_vec.items()}
            )
        assert torch.equal(logits, ref_logits) and torch.equal(parts, ref_parts)
        assert float(loss) == float(ref_loss) and float(parts[1]) > 0 and float(parts[2]) > 0
        # no parameter or buffer of the model is an entity-vector table ([n, 384])
        assert not any(p.dim() == 2 and p.shape[1] == 384 and p.shape[0] in (41, 61)
                       for p in [*module.parameters(), *module.buffers()])  # fmt: skip
        pipeline = TrainPipelineSparseDist(dmp, optimizer, env.device, execute_all_batches=True)
        it = train_batches(data, 128, env.rank, env.world_size, 0, 0, False, 4, 0, 8)
        losses = []
        while True:
            try:
                losses.append(float(pipeline.progress(it)[0]))
            except StopIteration:
                break
        assert len(losses) == 4 and all(np.isfinite(losses))
        ckpt = save_checkpoint(Path(run_dir) / "ckpt", 4, dmp, optimizer, {}, env.is_main)
        keys = list(read_metadata_safely(ckpt).state_dict_metadata)
        assert any("t_item_id" in k for k in keys) and not any("content" in k for k in keys), keys
        return {"loss": float(loss)}
    finally:
        shutdown(env)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("synthetic") / "run", n_users=61, n_items=41)


@pytest.mark.parametrize("device", devices(2))
def test_two_ranks_batches_carry_the_parquet_vectors(run_dir: Path, device: str):
    r0, r1 = run_ranks(_two_ranks, 2, str(run_dir), device)
    assert np.isfinite(r0["loss"]) and np.isfinite(r1["loss"])
    stores = sorted(p.name for p in (run_dir / "features" / "vectors").glob("*.f16"))
    assert stores == ["item_text.f16", "user_text.f16"]  # written once, by one of the ranks


def test_a_store_cut_short_under_a_reader_is_an_error_not_garbage(tmp_path: Path):
    n = 50
    source, _ = _write_unsorted(tmp_path, n, 1)
    store = open_store(tmp_path, "fp", "item_text", source, "item_id", "item_text", n, C)
    os.truncate(store.path, vector_store.HEADER_BYTES + 10 * C * 2 + 7)  # rows 10.. gone
    np.testing.assert_array_equal(store.read(np.array([2])).shape, (1, C))
    with pytest.raises(DataError, match="truncated"):
        store.read(np.array([3, 40]))


_COMPILE_CHECK = """
import sys, time
from pathlib import Path
import numpy as np
from trainer import neighbor_store, vector_store
source, kind = Path(sys.argv[1]), sys.argv[2]
t0 = time.perf_counter()
if kind == "vectors":
    store = vector_store.open_store(source.parent, "fp", "item_text", source, "item_id", "item_text", 100, 8)
else:
    store = neighbor_store.NeighborStore(source, neighbor_store.store_header("fp", "nb", 3, None))
opened = len(vector_store._scatter_pread.signatures)
t1 = time.perf_counter()
store.read(np.arange(100)) if kind == "vectors" else store.lists(np.arange(3))
print(opened, len(vector_store._scatter_pread.signatures), time.perf_counter() - t1)
"""


@pytest.mark.parametrize("kind", ["vectors", "neighbors"])
def test_opening_a_store_compiles_the_read_loop(tmp_path: Path, kind: str):
    """The compiled read loop is compiled when a store opens (setup), not by the first read:
    training's first reads run in the reader thread while the first step waits, so a
    compile there (about 1 s) was timed as training. A fresh process, since a compile is
    per process; the reads then use that one signature (no second compile)."""
    source, _ = _write_unsorted(tmp_path, 100, 1)
    if kind == "neighbors":  # anchors 0 and 1 with two neighbours each
        source = tmp_path / "nb.bin"
        lists = (np.array([0, 0, 1, 1]), np.array([1, 2, 0, 2]), np.ones(4))
        neighbor_store.write_neighbors(source, iter([lists]), neighbor_store.store_header("fp", "nb", 3, None))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run([sys.executable, "-c", _COMPILE_CHECK, str(source), kind],
                         env=env, capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    opened, after_read, read_s = int(out[0]), int(out[1]), float(out[2])
    assert (opened, after_read) == (1, 1)
    assert read_s < 0.2  # a compile takes about 1 s
