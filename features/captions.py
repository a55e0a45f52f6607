"""Image captions and the caption vectors pooled from them (dlrrec paper, section 4.3).

Each image becomes one sentence, each sentence one MiniLM vector (features/text.py),
and an entity's image vector is the mean of its sentences' vectors ("average-pooled").

Where a sentence comes from:

    source   a caption the source ships with the photo (Yelp `photos.json`), used as is
    blip2    BLIP-2 unconditional captioning of a local image file (`Blip2Captioner`),
             only when a model folder is configured; otherwise images without a source
             caption are counted and left out

An entity with no caption gets a zero vector and a False mask, never a made-up vector.

Leakage: photos attached to a review belong to that review.  The vectors are pooled
per (entity, slot) with the user profile's slots (`slot_means`): a training row reads
the photos of training reviews outside its own hash fold (temporal split: of reviews
in strictly earlier time blocks), val/test rows and the entity tables the photos of
training reviews only; photos of the item itself (item metadata) are not tied to any
review and always count.

Shapes: N = interaction rows, E = entities, C = captions, S = slots, D = content dim (384).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import numpy as np
import scipy.sparse as sp

from dlrrec.config import ConfigError, DataError

log = logging.getLogger("dlrrec.features")



@dataclass
class CaptionStats:
    """Counts for `_meta.json`: where the captions came from."""

    source_captions: int = 0
    images: int = 0
    images_missing: int = 0
    images_uncaptioned: int = 0
    generated: int = 0
    cache_hits: int = 0

    def to_meta(self) -> dict[str, int]:
        return dict(self.__dict__)


class Captioner(Protocol):
    name: str
    stats: CaptionStats

    def caption(self, paths: Sequence[Path]) -> list[str]: ...


def image_key(model: str, max_new_tokens: int, data: bytes) -> str:
    """Cache key: the model folder's id, the generation length and the image bytes."""
    h = hashlib.sha256(f"{model}\0{max_new_tokens}\0".encode())
    h.update(data)
    return h.hexdigest()


class Blip2Captioner:
    """BLIP-2 unconditional captions from a local model folder, batched and cached on disk.

    The folder is what `Blip2ForConditionalGeneration.save_pretrained` and the
    processor's `save_pretrained` write (e.g. a snapshot of Salesforce/blip2-opt-2.7b);
    it is loaded offline on first use.

    Args:
        model_path: the model + processor folder.
        batch_size: images per `generate` call.
        max_new_tokens: caption length limit (greedy decoding, so captions are deterministic).
        cache_dir: captions are stored as `<sha256(model id, max_new_tokens, image bytes)>.json`;
            "" = no cache.
        device: torch device for the model ("cpu", "cuda").

    Example::

        cap = Blip2Captioner("models/blip2-opt-2.7b", cache_dir="cache/captions")
        cap.caption([Path("photos/p1.jpg")])  # -> ["a pizza on a wooden table"]
    """

    name = "blip2"

    def __init__(
        self,
        model_path: str,
        batch_size: int = 8,
        max_new_tokens: int = 30,
        cache_dir: str = "",
        device: str = "cpu",
    ) -> None:
        if not Path(model_path).is_dir():
            raise ConfigError(f"features.images.blip2_path: {model_path} is not a folder")
        from features.embed_cache import model_id

        self.model_path = model_path
        self.model_id = model_id(model_path)
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.cache = Path(cache_dir) if cache_dir else None
        self.device = device
        self.stats = CaptionStats()
        self._model: Any = None
        self._processor: Any = None

    def _load(self) -> None:
        if self._model is not None:
            return
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from transformers import AutoProcessor, Blip2ForConditionalGeneration
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        try:
            self._processor = AutoProcessor.from_pretrained(self.model_path)
            model: Any = Blip2ForConditionalGeneration.from_pretrained(self.model_path)
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"features.images.blip2_path: cannot load BLIP-2 from {self.model_path} "
                f"({str(e).splitlines()[0]})"
            ) from None
        model.to(self.device)  # (in place for a module)
        self._model = model.eval()

    def caption(self, paths: Sequence[Path]) -> list[str]:
        """One caption per image file, in order (identical files are captioned once)."""
        keys = []
        for p in paths:
            try:
                keys.append(image_key(self.model_id, self.max_new_tokens, Path(p).read_bytes()))
            except OSError as e:
                raise DataError(f"{p}: cannot read the image ({e.strerror})") from None
        out: dict[str, str] = {}
        todo: dict[str, Path] = {}
        for k, p in zip(keys, paths):
            if k in out or k in todo:
                continue
            hit = self.cache / f"{k}.json" if self.cache else None
            if hit is not None and hit.is_file():
                out[k] = str(json.loads(hit.read_text())["caption"])
                self.stats.cache_hits += 1
            else:
                todo[k] = Path(p)
        items = list(todo.items())
        for s in range(0, len(items), self.batch_size):
            chunk = items[s : s + self.batch_size]
            for (k, _), text in zip(chunk, self.generate([p for _, p in chunk])):
                out[k] = text
                self._store(k, text)
        self.stats.generated += len(items)
        return [out[k] for k in keys]

    def generate(self, paths: Sequence[Path]) -> list[str]:
        """Caption one batch with the model (no cache)."""
        import torch
        from PIL import Image, UnidentifiedImageError

        self._load()
        images = []
        for p in paths:
            try:
                with Image.open(p) as im:
                    images.append(im.convert("RGB"))
            except (UnidentifiedImageError, OSError) as e:
                raise DataError(f"{p}: not a readable image ({type(e).__name__})") from None
        inputs = self._processor(images=images, return_tensors="pt").to(self.device)
        with torch.no_grad():
            ids = self._model.generate(
                **inputs, max_new_tokens=self.max_new_tokens, do_sample=False
            )
        texts = self._processor.batch_decode(ids, skip_special_tokens=True)
        return [" ".join(t.split()) for t in texts]

    def _store(self, key: str, text: str) -> None:
        if self.cache is None:
            return
        self.cache.mkdir(parents=True, exist_ok=True)
        path = self.cache / f"{key}.json"
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps({"model": self.model_path, "caption": text}))
        tmp.replace(path)  # atomic: a concurrent reader never sees half a file


def resolve_image(ref: str, image_dir: Path) -> Path:
    """An image reference -> a local path (which may not exist).

    `file://` URLs and absolute paths are used as they are, relative paths are taken
    under `image_dir`, and http(s) URLs map to `image_dir/<file name in the URL>`:
    the job never downloads (download the dump's images into one folder first).
    """
    url = urlparse(ref)
    if url.scheme == "file":
        return Path(url.path)
    if url.scheme in ("http", "https"):
        return image_dir / Path(url.path).name
    p = Path(ref)
    return p if p.is_absolute() else image_dir / p


# ---- pooling (pure) ------------------------------------------------------------------


def caption_sums(owner: np.ndarray, vecs: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-owner float64 sums and int64 counts of caption vectors.

    Float16 vectors summed in float64 lose no bits (see features/profiles.py), so a
    mean does not depend on summation order and "unchanged" can be tested bit for bit.

    Args:
        owner: int64 [C] owner index of each caption (-1 = counted nowhere).
        vecs: [C, D] caption vectors.
        n: number of owners.

    Returns:
        (float64 [n, D], int64 [n]).
    """
    keep = owner >= 0
    m = sp.csr_matrix(
        (np.ones(int(keep.sum())), (owner[keep], np.nonzero(keep)[0])), shape=(n, len(owner))
    )
    sums = np.asarray(m @ vecs.astype(np.float64)).reshape(n, vecs.shape[1])
    return sums, np.bincount(owner[keep], minlength=n).astype(np.int64)


SLOT_ENTITIES = 1024  # entities per pooled block: [1024, S, D] float64 is 66 MB at S = 21


def slot_means(
    entity: np.ndarray,
    group: np.ndarray,
    in_entity: np.ndarray,
    vecs: np.ndarray,
    n: int,
    slots: int,
    earlier: bool,
    always: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean caption vectors per (entity, slot), key = entity * slots + slot (G = slots - 1).

    Slot s < G pools the entity's captions of groups other than s (`earlier`: of groups
    < s), slot G its captions with `in_entity`; `always` captions (an item's own photos)
    count in every slot.  Sums are float64 of float16 values (exact), so a slot's mean
    does not depend on summation order.  Entities are pooled `SLOT_ENTITIES` at a time.

    Args:
        entity: int64 [C] entity of each caption; group: int64 [C] its fold or time
            block (-1: in no group); in_entity: bool [C] counted in slot G.
        vecs: [C, D] caption vectors.
        n: entities; slots: S.
        always: (int64 [A] entity, [A, D] vectors) or None.

    Returns:
        (int64 [n * slots] row of the vectors of each key, -1 = no caption;
         float16 [V, D] the keys' means).
    """
    d, g = vecs.shape[1], slots - 1
    a_ent, a_vecs = always if always is not None else (np.zeros(0, np.int64), np.zeros((0, d)))
    order, a_order = np.argsort(entity, kind="stable"), np.argsort(a_ent, kind="stable")
    key_vector = np.full(n * slots, -1, dtype=np.int64)
    out: list[np.ndarray] = []
    for lo in range(0, n, SLOT_ENTITIES):
        nb = min(n, lo + SLOT_ENTITIES) - lo
        c = order[slice(*np.searchsorted(entity[order], [lo, lo + nb]))]
        ac = a_order[slice(*np.searchsorted(a_ent[a_order], [lo, lo + nb]))]
        e, grp = entity[c] - lo, group[c]
        gs, gc = caption_sums(np.where(grp >= 0, e * g + grp, -1), vecs[c], nb * g)
        gs, gc = gs.reshape(nb, g, d), gc.reshape(nb, g)
        if earlier:  # groups before s
            gs = np.concatenate([np.zeros((nb, 1, d)), np.cumsum(gs, 1)[:, :-1]], 1)
            gc = np.concatenate([np.zeros((nb, 1), np.int64), np.cumsum(gc, 1)[:, :-1]], 1)
        else:  # every group but s
            gs, gc = gs.sum(1, keepdims=True) - gs, gc.sum(1, keepdims=True) - gc
        es, ec = caption_sums(np.where(in_entity[c], e, -1), vecs[c], nb)
        als, alc = caption_sums(a_ent[ac] - lo, a_vecs[ac], nb)
        sums = np.concatenate([gs, es[:, None]], 1) + als[:, None]
        counts = np.concatenate([gc, ec[:, None]], 1) + alc[:, None]
        has = counts > 0
        key_vector[lo * slots + np.flatnonzero(has)] = sum(len(x) for x in out) + np.arange(has.sum())
        out.append((sums[has] / counts[has][:, None]).astype(np.float32).astype(np.float16))
    return key_vector, np.concatenate(out) if out else np.zeros((0, d), np.float16)


def entity_means(
    key_vector: np.ndarray, vecs: np.ndarray, slots: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each entity's slot G (`slot_means`): (float32 [E, D], bool [E] mask)."""
    idx = key_vector[slots - 1 :: slots]
    out = np.zeros((idx.size, vecs.shape[1]), np.float32)
    out[idx >= 0] = vecs[idx[idx >= 0]]
    return out, idx >= 0


# ---- assembling the image vectors ------------------------------------------------------


@dataclass
class ImageVectors:
    """Caption vectors per (entity, slot) (`slot_means`) and per entity (slot G)."""

    user_keys: np.ndarray  # int64 [U * S] row of `user_vecs`, -1 = none
    user_vecs: np.ndarray  # float16 [V, D]
    item_keys: np.ndarray
    item_vecs: np.ndarray
    users: np.ndarray  # float32 [U, D]: training photos
    users_mask: np.ndarray  # bool [U]
    items: np.ndarray  # float32 [I, D]: training photos and the item's own
    items_mask: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


def _flatten(lists: Sequence[Sequence[str] | None]) -> tuple[np.ndarray, list[str]]:
    owner, values = [], []
    for i, lst in enumerate(lists):
        for v in lst or ():
            if v and v.strip():
                owner.append(i)
                values.append(v.strip())
    return np.asarray(owner, dtype=np.int64), values


def build_image_vectors(
    item_captions: Sequence[Sequence[str] | None],
    item_images: Sequence[Sequence[str] | None],
    review_images: Sequence[Sequence[str] | None],
    row_user: np.ndarray,
    row_item: np.ndarray,
    train: np.ndarray,
    n_users: int,
    n_items: int,
    embed: Callable[[list[str]], np.ndarray],
    captioner: Captioner | None,
    image_dir: Path,
    dim: int,
    row_group: np.ndarray,
    slots: int,
    earlier: bool,
) -> ImageVectors:
    """Caption every image, embed every caption once, and pool per (entity, slot).

    Args:
        item_captions: [I] the source's captions of each item's photos.
        item_images: [I] image references of each item (item metadata).
        review_images: [N] image references attached to each review row.
        row_user, row_item: int64 [N]; train: bool [N].
        embed: texts -> float16-exact vectors [len, D] (features.text.embed_texts).
        captioner: BLIP-2 for images without a source caption; None = leave them out.
        image_dir: where relative image references and downloaded URLs live.
        dim: D (for the empty case).
        row_group: int64 [N] each row's profile slot (features/owners.py
            `OwnerPlan.profile_slot`): its hash fold (random split; training rows) or
            time block (temporal split).  A slot s < G pools the photos of training
            reviews outside fold s (random) or of reviews of any split in blocks < s
            (temporal, DESIGN.md), plus the item's own photos; slot G the photos of
            training reviews plus the item's own (the entity tables).
        slots: S = G + 1.
        earlier: the temporal split's rule.
    """
    stats = captioner.stats if captioner is not None else CaptionStats()
    caps = _embedded_captions(
        item_captions, item_images, review_images, captioner, image_dir, stats
    )
    vecs = embed(caps.texts) if caps.texts else np.zeros((0, dim), np.float32)
    item_vecs = vecs[: len(caps.item_owner)].reshape(-1, dim)
    review_vecs = vecs[len(caps.item_owner) :].reshape(-1, dim)
    r = caps.review_row
    grp = np.where(train[r] | earlier, row_group[r], -1)  # random: training reviews only
    u = slot_means(row_user[r], grp, train[r], review_vecs, n_users, slots, earlier)
    i = slot_means(row_item[r], grp, train[r], review_vecs, n_items, slots, earlier,
                   (caps.item_owner, item_vecs))  # fmt: skip
    users, users_mask = entity_means(*u, slots)
    items, items_mask = entity_means(*i, slots)
    meta = {
        "provider": captioner.name if captioner is not None else "source",
        "captions": len(caps.texts),
        "items_with_images": int(items_mask.sum()),
        "users_with_images": int(users_mask.sum()),
        **stats.to_meta(),
    }
    return ImageVectors(*u, *i, users, users_mask, items, items_mask, meta)


@dataclass
class _Captions:
    """Every caption to embed, item-level ones first: `texts[:len(item_owner)]` are
    the items' (source captions, then generated ones), the rest the review rows'."""

    texts: list[str]
    item_owner: np.ndarray  # int64: the item of each item-level caption
    review_row: np.ndarray  # int64: the row of each review caption


def _embedded_captions(
    item_captions: Sequence[Sequence[str] | None],
    item_images: Sequence[Sequence[str] | None],
    review_images: Sequence[Sequence[str] | None],
    captioner: Captioner | None,
    image_dir: Path,
    stats: CaptionStats,
) -> _Captions:
    """The source's captions plus a generated caption of every image the captioner
    finds and captions (counted in `stats`)."""
    cap_item, cap_text = _flatten(item_captions)
    stats.source_captions = len(cap_text)
    img_item, img_refs = _flatten(item_images)
    img_row, row_refs = _flatten(review_images)
    texts = _caption_images(img_refs + row_refs, captioner, image_dir, stats)
    n_img_item = len(img_refs)
    gen_item = [(int(img_item[k]), t) for k, t in enumerate(texts[:n_img_item]) if t]
    gen_row = [(int(img_row[k]), t) for k, t in enumerate(texts[n_img_item:]) if t]
    item_owner = np.concatenate([cap_item, np.asarray([i for i, _ in gen_item], np.int64)])
    return _Captions(
        texts=cap_text + [t for _, t in gen_item] + [t for _, t in gen_row],
        item_owner=item_owner.astype(np.int64),
        review_row=np.asarray([r for r, _ in gen_row], dtype=np.int64),
    )


def _caption_images(
    refs: list[str], captioner: Captioner | None, image_dir: Path, stats: CaptionStats
) -> list[str | None]:
    """A caption per image reference; None for a missing file, an empty caption or
    when there is no captioner."""
    stats.images = len(refs)
    texts: list[str | None] = [None] * len(refs)
    if captioner is None:
        stats.images_uncaptioned = len(refs)
        return texts
    if not refs:
        return texts
    paths = [resolve_image(r, image_dir) for r in refs]
    found = [k for k, p in enumerate(paths) if p.is_file()]
    stats.images_missing = len(refs) - len(found)
    if stats.images_missing:
        first = next(p for p in paths if not p.is_file())
        log.warning(
            "features: %d of %d images not found (first: %s); they are left out",
            stats.images_missing,
            len(refs),
            first,
        )
    for k, text in zip(found, captioner.caption([paths[k] for k in found])):
        texts[k] = text or None  # an empty caption is no caption
    return texts


@dataclass
class ImagesConfig:
    """The `features.images` section: image caption vectors (modality `image`).

    Args:
        blip2_path: local BLIP-2 folder (model + processor); "" = source captions only.
        image_dir: folder of the image files that references point to; "" = raw_dir.
        batch_size: images per BLIP-2 `generate` call.
        max_new_tokens: BLIP-2 caption length limit.
        cache_dir: caption cache folder (model + image bytes -> caption); "" = none.
        device: torch device for BLIP-2.
    """

    blip2_path: str = ""
    image_dir: str = ""
    batch_size: int = 8
    max_new_tokens: int = 30
    cache_dir: str = "cache/captions"
    device: str = "cpu"

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ConfigError("features.images.batch_size: must be >= 1")
        if self.max_new_tokens < 1:
            raise ConfigError("features.images.max_new_tokens: must be >= 1")


def build_captioner(cfg: ImagesConfig) -> Captioner | None:
    if not cfg.blip2_path:
        return None
    return Blip2Captioner(
        cfg.blip2_path, cfg.batch_size, cfg.max_new_tokens, cfg.cache_dir, cfg.device
    )
