"""Texts embedded from runs in one sorted pass (features/embed_runs.py) against one
`embed_texts` call, and the keyed tables' partition-wise writer and reader."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from features import embed_runs, text
from features.embed_runs import EmbedRuns
from features.keyed import KeyedReader, KeyedWriter

WORDS = "the food was great service slow pizza cheap fair staff friendly noisy sushi tacos".split()


def _texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12))) for _ in range(n)]


@pytest.mark.parametrize("cache", [False, True])
def test_runs_embed_bit_for_bit_as_one_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: bool
) -> None:
    """Runs with repeats within and across them, merged 3 texts at a time, encoded 4 per
    call: every vector is the one a single `embed_texts` call over all texts gives,
    whose batches depend on every text (MiniLM's float16 bits depend on a text's batch
    neighbours, so embedding each run alone would not do)."""
    model = text.model_path("")
    texts = _texts(90, 0)
    ours, ref = (str(tmp_path / n) if cache else "" for n in ("cache", "cache-ref"))
    if cache:  # a seventh of the texts cached already: the misses are what gets batched
        for d in (ours, ref):
            text.embed_texts(texts[::7], model, 2, d, progress=False)
    want = text.embed_texts(texts, model, 2, ref, progress=False)
    monkeypatch.setattr(embed_runs, "MERGE_BLOCK", 3)
    monkeypatch.setattr(embed_runs, "RUN_BATCH", 5)
    runs = EmbedRuns(tmp_path / "runs", lambda: text.SortedEncoder(model, 2, ours, False), 384)
    cuts = np.sort(np.random.default_rng(1).choice(np.arange(1, len(texts)), 6, replace=False))
    added = [runs.add(list(part)) for part in np.split(np.asarray(texts, dtype=object), cuts)]
    assert runs.embed() == len(set(texts))
    got = np.concatenate([runs.vectors(run, local) for run, local in added])
    np.testing.assert_array_equal(got, want)


def test_keyed_writer_blocks_and_reader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys added partition by partition land in one row group per KEY_BLOCK keys (empty
    groups included), and the reader returns each entity's last slot."""
    from features import keyed

    monkeypatch.setattr(keyed, "KEY_BLOCK", 8)
    slots, n_entities, dim = 3, 10, 4
    rng = np.random.default_rng(0)
    has = rng.random(n_entities * slots) < 0.4
    has[6:12] = False  # keys 8..11 hold nothing: an empty row group
    vecs = rng.standard_normal((n_entities * slots, dim)).astype(np.float16)
    path = tmp_path / "k" / "part-00000.parquet"
    w = KeyedWriter(path, "v", dim, n_entities * slots)
    for lo, hi in ((0, 2), (2, 3), (3, 7), (7, 10)):  # entity partitions
        keys = np.flatnonzero(has[lo * slots : hi * slots]) + lo * slots
        w.add(keys, vecs[keys])
    w.close()
    pf = pq.ParquetFile(path)
    assert pf.num_row_groups == -(-n_entities * slots // 8)
    table = pf.read()
    assert table["key"].to_numpy().tolist() == np.flatnonzero(has).tolist()
    r = KeyedReader(path, slots)
    got = [r.take(ids, dim) for ids in (np.array([0, 2]), np.array([3]), np.arange(4, 10))]
    out, mask = np.concatenate([g[0] for g in got]), np.concatenate([g[1] for g in got])
    last = np.array([0, 2, 3, 4, 5, 6, 7, 8, 9]) * slots + slots - 1
    assert mask.tolist() == has[last].tolist()
    np.testing.assert_array_equal(out[mask], vecs[last][mask].astype(np.float32))
    assert not out[~mask].any()
    with pytest.raises(RuntimeError, match="increase"):
        r.take(np.array([9]), dim)
