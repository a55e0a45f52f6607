"""The trainer reads user profiles by each row's key (docs/features.md): the tower input
of a row is the profile-table row its `user_text_key` names, read from a disk-backed
FP16 store like the entity vectors; a key outside its user's slots is refused."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from dlrrec.config import DataError
from features.config import FeaturesConfig
from features.main import run as build_features
from trainer.data import keyed_table, make_batch, read_training_data

sys.path.insert(0, str(Path(__file__).parents[1] / "features"))
from tiny_reviews import raw_tables, read_outputs, row_profiles, write_raw  # noqa: E402


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = write_raw(tmp_path_factory.mktemp("raw"), raw_tables())
    out = tmp_path_factory.mktemp("run")
    build_features(FeaturesConfig(run_dir=str(out), raw_dir=str(raw), seed=3))
    return out


def test_tower_input_is_the_keyed_profile_row(run_dir: Path) -> None:
    data = read_training_data(run_dir, ["text"], contrastive=False)
    col = keyed_table("user_text")
    assert data.tower_spec() == [("user_text", f"{col}/row"), ("item_text", "item_text/row")]
    assert data.entity_tables == [col, "item_text"]
    assert data.read_rows("train").user_content == {}  # no per-row vectors are read
    out = read_outputs(run_dir)
    for name in ("train", "val", "test"):
        split = data.read_rows(name)
        rows = np.arange(split.n)
        batch = make_batch(
            data, split, rows, np.ones(split.n, bool), np.random.default_rng(0), True
        )
        # the same vectors a slow reference resolves from the Parquet files
        want = torch.from_numpy(row_profiles(out, name).astype(np.float16))
        assert torch.equal(batch.vectors[f"{col}/row"], want), name


def test_a_key_of_another_users_slot_is_refused(run_dir: Path, tmp_path: Path) -> None:
    import shutil

    bad = tmp_path / "run"
    shutil.copytree(run_dir, bad)
    path = bad / "features" / "examples" / "val" / "part-00000.parquet"
    t = pq.read_table(path)
    keys = t["user_text_key"].to_numpy().copy()
    keys[0] += 6  # the same slot of the next user
    i = t.schema.get_field_index("user_text_key")
    pq.write_table(t.set_column(i, t.schema.field(i), pa.array(keys)), path)
    data = read_training_data(bad, ["text"], contrastive=False)  # reads no rows yet
    with pytest.raises(DataError, match=r"examples/val:user_text_key: keys outside"):
        data.read_rows("val")  # a rank checks the keys of every block it reads
