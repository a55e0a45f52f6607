"""features/text.py embedding: dedup, the on-disk float16 cache, and equality with direct encode."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from features import text
from features.config import FeaturesConfig
from features.embed_cache import EmbeddingCache, model_id, text_keys
from features.main import fingerprint_config


class FakeModel:
    """A deterministic 8-d encoder that records what it was asked to encode."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def get_embedding_dimension(self) -> int:
        return 8

    def encode(self, texts: list[str], **kw: Any) -> np.ndarray:
        self.seen += texts
        seeds = [int.from_bytes(hashlib.sha256(t.encode()).digest()[:4], "little") for t in texts]
        x = np.stack([np.random.default_rng(s).normal(size=8) for s in seeds])
        return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeModel:
    model = FakeModel()
    monkeypatch.setattr(text, "load_text_model", lambda path: model)
    return model


TEXTS = ["pizza", "sushi", "pizza", "tacos", "sushi", "pizza"]


def test_dedup_encodes_each_text_once(fake: FakeModel) -> None:
    out = text.embed_texts(TEXTS, "m", batch_size=2, progress=False)
    assert sorted(fake.seen) == ["pizza", "sushi", "tacos"]
    assert out.shape == (6, 8) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0], out[2])
    np.testing.assert_array_equal(out, out.astype(np.float16).astype(np.float32))  # float16-exact


def test_cache_rerun_encodes_nothing(fake: FakeModel, tmp_path: Path) -> None:
    first = text.embed_texts(TEXTS, "m", 2, cache_dir=str(tmp_path), progress=False)
    assert len(fake.seen) == 3
    again = text.embed_texts(TEXTS, "m", 2, cache_dir=str(tmp_path), progress=False)
    assert len(fake.seen) == 3
    np.testing.assert_array_equal(first, again)
    text.embed_texts(["tacos", "ramen"], "m", 2, cache_dir=str(tmp_path), progress=False)
    assert fake.seen[3:] == ["ramen"]  # only the new text
    text.embed_texts(["tacos"], "other-model", 2, cache_dir=str(tmp_path), progress=False)
    assert fake.seen[4:] == ["tacos"]  # the key includes the model
    np.testing.assert_array_equal(first, text.embed_texts(TEXTS, "m", 2, progress=False))


def test_cache_store_roundtrip(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path / "c.sqlite", 4)
    keys = text_keys("m", ["a", "b", "c"])
    cache.put(keys[:2], np.array([[1, 2, 3, 4], [0.5, 0, 0, 0]], dtype=np.float32))
    found, vecs = cache.get(keys)
    assert found.tolist() == [True, True, False] and vecs.dtype == np.float16
    np.testing.assert_array_equal(vecs[2], 0)
    cache.close()
    assert len(set(keys)) == 3 and text_keys("m2", ["a"])[0] != keys[0]


def test_model_id_follows_the_files(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"dim": 384}')
    (tmp_path / "model.safetensors").write_bytes(b"x" * 10)
    a = model_id(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"x" * 11)
    assert model_id(tmp_path) != a
    assert model_id("not/a/folder") == "not/a/folder"


def test_cache_dir_not_in_fingerprint() -> None:
    a = fingerprint_config(FeaturesConfig(run_dir="r"))
    assert a == fingerprint_config(FeaturesConfig(run_dir="r", embed_cache_dir="/tmp/c"))


def test_matches_direct_encode_with_real_model(tmp_path: Path) -> None:
    path = text.model_path("")
    texts = [
        "Great crust and fresh basil.",
        "Omakase was expensive.",
        "Great crust and fresh basil.",
    ]
    direct = text.load_text_model(path).encode(
        texts, normalize_embeddings=True, convert_to_numpy=True
    )
    for _ in range(2):  # cold, then from the cache
        ours = text.embed_texts(texts, path, 2, cache_dir=str(tmp_path), progress=False)
        np.testing.assert_allclose(ours, direct, atol=1e-3)
