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

The build streams (`stream_image_vectors`): the rows' photos are captioned chunk by
chunk, every caption is embedded in one sorted pass (features/embed_runs.py), each
review caption's vector is spilled to its user's and its item's partition, and each
partition is pooled alone into the keyed tables.  tests/features/image_reference.py
is the same computation over whole per-row lists, the reference the tests check it by.

Shapes: N = interaction rows, E = entities, C = captions, S = slots, D = content dim (384).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from dlrrec.config import ConfigError, DataError
from features.embed_runs import EmbedRuns
from features.keyed import KeyedWriter
from features.spill import Spill, bucket_of, owner_ranges

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


# ---- the streaming build's helpers -------------------------------------------------


def _flatten(lists: Sequence[Sequence[str] | None]) -> tuple[np.ndarray, list[str]]:
    owner, values = [], []
    for i, lst in enumerate(lists):
        for v in lst or ():
            if v and v.strip():
                owner.append(i)
                values.append(v.strip())
    return np.asarray(owner, dtype=np.int64), values


# ---- streaming the build's image vectors ------------------------------------------------

PARTITION_CAPTIONS = 1 << 16  # review captions per entity partition: what one holds
# (their float16 vectors, ~50 MB, and float64 sums of `SLOT_ENTITIES` entities at a time)
CAPTION_ROWS = pa.schema([("user", pa.int64()), ("item", pa.int64()), ("grp", pa.int64()),
                          ("train", pa.bool_()), ("run", pa.int64()), ("local", pa.int64())])  # fmt: skip


class _Finder:
    """Captions of image references, chunk after chunk, with `_caption_images`' counts
    summed over the calls and its missing-file warning given once at the end."""

    def __init__(self, captioner: Captioner | None, image_dir: Path, stats: CaptionStats) -> None:
        self.captioner, self.image_dir, self.stats = captioner, image_dir, stats
        self.first_missing: Path | None = None

    def caption(self, refs: list[str]) -> list[str | None]:
        st = self.stats
        st.images += len(refs)
        texts: list[str | None] = [None] * len(refs)
        if self.captioner is None:
            st.images_uncaptioned += len(refs)
            return texts
        paths = [resolve_image(r, self.image_dir) for r in refs]
        found = [k for k, p in enumerate(paths) if p.is_file()]
        st.images_missing += len(refs) - len(found)
        if len(found) < len(refs) and self.first_missing is None:
            self.first_missing = next(p for p in paths if not p.is_file())
        if found:
            for k, text in zip(found, self.captioner.caption([paths[k] for k in found])):
                texts[k] = text or None  # an empty caption is no caption
        return texts

    def warn(self) -> None:
        if self.stats.images_missing:
            log.warning("features: %d of %d images not found (first: %s); they are left out",
                        self.stats.images_missing, self.stats.images, self.first_missing)  # fmt: skip


@dataclass
class _ItemCaptions:
    """The item-level captions (source ones, then generated): their item and their
    index in embedding run `run`."""

    owner: np.ndarray
    run: int
    local: np.ndarray


def _caption_rows(
    item_captions: Sequence[Sequence[str] | None],
    item_images: Sequence[Sequence[str] | None],
    chunks: Any,
    finder: _Finder,
    runs: EmbedRuns,
    earlier: bool,
    path: Path,
    counts: dict[str, np.ndarray],
) -> tuple[_ItemCaptions, int]:
    """Caption every image (the items' with the first chunk's, as one call did before)
    and add every caption text to `runs`; each review caption's (user, item, group,
    train, run, index) goes to `path`, chunk by chunk.

    Returns: (the item-level captions, captions); `counts` [E] gets each entity's
    review captions.
    """
    cap_item, cap_text = _flatten(item_captions)
    finder.stats.source_captions = len(cap_text)
    img_item, img_refs = _flatten(item_images)
    items: _ItemCaptions | None = None
    writer, n = pq.ParquetWriter(path, CAPTION_ROWS), len(cap_text)
    for c in chunks(["image_urls"]):
        lists = c.raw["image_urls"].to_pylist() if "image_urls" in c.raw.column_names else []
        row, row_refs = _flatten(lists)
        texts = finder.caption((img_refs if items is None else []) + row_refs)
        if items is None:
            gen = [(int(img_item[k]), t) for k, t in enumerate(texts[: len(img_refs)]) if t]
            run, local = runs.add(cap_text + [t for _, t in gen])
            owner = np.concatenate([cap_item, np.asarray([i for i, _ in gen], np.int64)])
            items, texts = _ItemCaptions(owner.astype(np.int64), run, local), texts[len(img_refs) :]
        gen_row = [(int(row[k]), t) for k, t in enumerate(texts) if t]
        r = np.asarray([q for q, _ in gen_row], dtype=np.int64)
        run, local = runs.add([t for _, t in gen_row])
        grp = np.where(c.train[r] | earlier, c.profile_slot[r], -1)  # random: training reviews only
        cols = [c.user[r], c.item[r], grp, c.train[r], np.full(len(r), run), local]
        writer.write_table(pa.Table.from_arrays([pa.array(a) for a in cols], schema=CAPTION_ROWS))
        for e, owner in (("user", c.user[r]), ("item", c.item[r])):
            counts[e] += np.bincount(owner, minlength=len(counts[e]))
        n += len(gen_row)
    writer.close()
    assert items is not None  # (a build has rows)
    return items, n


def stream_image_vectors(
    item_captions: Sequence[Sequence[str] | None],
    item_images: Sequence[Sequence[str] | None],
    chunks: Any,
    n_users: int,
    encoder: Callable[[], Any],
    captioner: Captioner | None,
    image_dir: Path,
    dim: int,
    slots: int,
    earlier: bool,
    work: Path,
    out: dict[str, Path],
) -> dict[str, Any]:
    """The image vectors of streamed rows: caption chunk by chunk, embed every
    caption in one sorted pass (features/embed_runs.py), spill each review caption's
    vector to its user's and its item's partition, and pool one partition at a time
    into the keyed tables `out[entity]`.

    Args:
        item_captions, item_images: [I] per item (item metadata).
        chunks: the rows (features/content.py `Chunks`): their `image_urls` are the
            review photos; `profile_slot` is each row's slot (`slot_means`' group).
        encoder: MiniLM (features/text.py `SortedEncoder`).
        work: scratch folder.

    Returns:
        The `_meta.json` `images` block (captions, entities with a vector, caption counts).
    """
    work.mkdir(parents=True, exist_ok=True)
    stats = captioner.stats if captioner is not None else CaptionStats()
    finder, runs = _Finder(captioner, image_dir, stats), EmbedRuns(work / "runs", encoder, dim)
    counts = {"user": np.zeros(n_users, np.int64), "item": np.zeros(len(item_captions), np.int64)}
    items, n_captions = _caption_rows(item_captions, item_images, chunks, finder, runs,
                                      earlier, work / "captions.parquet", counts)  # fmt: skip
    finder.warn()
    runs.embed()
    edges = {e: owner_ranges(c, PARTITION_CAPTIONS) for e, c in counts.items()}
    spills = _spill_vectors(work / "captions.parquet", runs, edges, dim, work)
    with_images = {}
    for e in ("user", "item"):
        with_images[e] = _pool(spills[e], edges[e], out[e], f"{e}_image", dim, slots, earlier,
                               items if e == "item" else None, runs)  # fmt: skip
    return {
        "provider": captioner.name if captioner is not None else "source",
        "captions": n_captions,
        "items_with_images": with_images["item"],
        "users_with_images": with_images["user"],
        **stats.to_meta(),
    }


def _vector_schema(dim: int) -> pa.Schema:
    return pa.schema([("owner", pa.int64()), ("grp", pa.int64()), ("in_entity", pa.bool_()),
                      ("vec", pa.list_(pa.float16(), dim))])  # fmt: skip


def _spill_vectors(
    path: Path, runs: EmbedRuns, edges: dict[str, np.ndarray], dim: int, work: Path
) -> dict[str, Spill]:
    """Each review caption's vector (and group) to its user's and its item's partition."""
    spills = {e: Spill(work / f"vectors-{e}", len(edges[e]) - 1) for e in edges}
    pf = pq.ParquetFile(path)
    for g in range(pf.num_row_groups):
        t = pf.read_row_group(g)
        run, local = t["run"].to_numpy(), t["local"].to_numpy()
        vecs = np.zeros((t.num_rows, dim), np.float32)
        for r in np.unique(run).tolist():
            at = np.flatnonzero(run == r)
            vecs[at] = runs.vectors(r, local[at])
        flat = pa.array(vecs.astype(np.float16).reshape(-1))
        vec = pa.FixedSizeListArray.from_arrays(flat, dim)
        for e in ("user", "item"):
            owner = t[e].to_numpy()
            table = pa.Table.from_arrays([t[e], t["grp"], t["train"], vec], schema=_vector_schema(dim))
            spills[e].add(table, bucket_of(owner, edges[e]))
    for s in spills.values():
        s.close()
    return spills


def _pool(
    spill: Spill, edges: np.ndarray, path: Path, col: str, dim: int, slots: int, earlier: bool,
    items: _ItemCaptions | None, runs: EmbedRuns,
) -> int:  # fmt: skip
    """`slot_means` of each partition into the keyed table `path`; returns how many
    entities have a vector in their last slot."""
    writer = KeyedWriter(path, col, dim, int(edges[-1]) * slots)
    with_vector = 0
    for p in range(len(edges) - 1):
        lo, hi = int(edges[p]), int(edges[p + 1])
        t = spill.read(p)
        t = _vector_schema(dim).empty_table() if t is None else t
        vecs = np.asarray(t["vec"].combine_chunks().flatten().to_numpy(zero_copy_only=False),
                          np.float16).reshape(-1, dim)  # fmt: skip
        always = None
        if items is not None:
            sel = np.flatnonzero((items.owner >= lo) & (items.owner < hi))
            always = (items.owner[sel] - lo, runs.vectors(items.run, items.local[sel]))
        key_vector, means = slot_means(t["owner"].to_numpy() - lo, t["grp"].to_numpy(),
                                       t["in_entity"].to_numpy(zero_copy_only=False), vecs,
                                       hi - lo, slots, earlier, always)  # fmt: skip
        keys = np.flatnonzero(key_vector >= 0)
        writer.add(keys + lo * slots, means[key_vector[keys]])
        with_vector += int((key_vector[slots - 1 :: slots] >= 0).sum())
    writer.close()
    return with_vector


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
