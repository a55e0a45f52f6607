"""The image vectors computed in memory from whole per-row lists: the slow reference
the tests check the pooling and the streamed build (features/captions.py
`stream_image_vectors`) against.  Not used by the build."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from features.captions import Captioner, CaptionStats, _flatten, resolve_image, slot_means

log = logging.getLogger("dlrrec.features")


def entity_means(
    key_vector: np.ndarray, vecs: np.ndarray, slots: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each entity's slot G (`slot_means`): (float32 [E, D], bool [E] mask)."""
    idx = key_vector[slots - 1 :: slots]
    out = np.zeros((idx.size, vecs.shape[1]), np.float32)
    out[idx >= 0] = vecs[idx[idx >= 0]]
    return out, idx >= 0


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
