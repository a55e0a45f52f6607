"""The temporal split's two protocols (features.temporal_history, docs/evaluation.md).

`causal` (the default): a row's profile, rating statistics and history bags read every
interaction strictly before it, val/test ones included. `frozen`: training interactions
only. The perturbation test rewrites EVERY val/test rating (and so label): under frozen no
row's features move; under causal later rows' do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from test_features_leakage import by_pair, same_features
from tiny_reviews import fails, write_raw

BAGS = {"split": "temporal", "rating_stats": True, "rating_recent": 3, "rating_bias": True,
        "history_bags": True}  # fmt: skip


def _flip_held_out(tables: dict[str, pa.Table], base: dict[str, Any]) -> dict[str, pa.Table]:
    """`tables` with every val/test interaction's rating moved across the label threshold."""
    users, items = base["users"]["user"].to_pylist(), base["items"]["item"].to_pylist()
    held_out = {(users[u], items[i]) for (u, i), r in by_pair(base).items() if r["split"] != "train"}
    inter = tables["interactions.parquet"]
    ratings = inter["rating"].to_numpy().copy()
    for n, (u, i) in enumerate(zip(inter["user"].to_pylist(), inter["item"].to_pylist())):
        if (u, i) in held_out:
            ratings[n] = 1.0 if ratings[n] >= 4 else 5.0
    idx = inter.schema.get_field_index("rating")
    inter = inter.set_column(idx, inter.schema.field(idx), pa.array(ratings, pa.float32()))
    return dict(tables, **{"interactions.parquet": inter})


def test_frozen_history_never_reads_a_val_or_test_rating(build, tiny_tables, tiny_raw, tmp_path: Path):
    changed = {}
    for protocol in ("frozen", "causal"):
        base = build(tiny_raw, **BAGS, temporal_history=protocol)
        assert base["meta"]["temporal_history"] == protocol
        flipped_raw = write_raw(tmp_path / protocol, _flip_held_out(tiny_tables, base))
        rows, after = by_pair(base), by_pair(build(flipped_raw, **BAGS, temporal_history=protocol))
        assert sum(rows[k]["label"] != after[k]["label"] for k in rows if rows[k]["split"] != "train") >= 3
        changed[protocol] = [k for k in rows if not same_features(rows[k], after[k])]
    assert changed["frozen"] == []
    assert changed["causal"]  # the perturbation has teeth: causal rows read earlier val/test ratings


def test_frozen_val_test_rows_read_all_and_only_training_interactions(build, tiny_raw):
    out = build(tiny_raw, **BAGS, temporal_history="frozen")
    train = out["train"]
    for split in ("val", "test"):
        t = out[split]
        for r in range(t.num_rows):
            user = t["user_id"][r].as_py()
            mine = np.asarray(train["user_id"]) == user
            pos_items = np.asarray(train["item_id"])[mine & (np.asarray(train["label"]) == 1)]
            assert sorted(t["user_pos_items"][r].as_py()) == sorted(pos_items.tolist())  # < history_max_len
            assert t["user_hist_n"][r].as_py() == pytest.approx(np.log1p(mine.sum()) / 5.0, abs=1e-6)


def test_frozen_needs_the_temporal_split(tmp_path: Path, capsys):
    err = fails([f"run_dir={tmp_path}", "temporal_history=frozen"], capsys)
    assert "features.temporal_history" in err and "split=temporal" in err
