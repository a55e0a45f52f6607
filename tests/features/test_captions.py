"""Image captions: BLIP-2 loading and generation (tiny random model), cache, pooling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from image_reference import build_image_vectors, entity_means
from tiny_blip2 import save_tiny_blip2, write_images

from dlrrec.config import ConfigError, DataError
from features.captions import (
    Blip2Captioner,
    ImagesConfig,
    build_captioner,
    caption_sums,
    resolve_image,
    slot_means,
)


@pytest.fixture(scope="module")
def blip2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_blip2(tmp_path_factory.mktemp("blip2"))


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_images(tmp_path_factory.mktemp("img"), [f"p{k}.png" for k in range(5)] + ["q.jpg"])


def direct_captions(model_dir: Path, paths: list[Path], max_new_tokens: int) -> list[str]:
    """Independent reference: transformers called directly, one image at a time."""
    from PIL import Image
    from transformers import AutoProcessor, Blip2ForConditionalGeneration

    proc = AutoProcessor.from_pretrained(model_dir)
    model = Blip2ForConditionalGeneration.from_pretrained(model_dir).eval()
    out = []
    for p in paths:
        inputs = proc(images=Image.open(p).convert("RGB"), return_tensors="pt")
        with torch.no_grad():
            ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        out.append(proc.batch_decode(ids, skip_special_tokens=True)[0].strip())
    return out


def test_blip2_batched_captions_match_direct_generation(blip2: Path, images: list[Path]) -> None:
    cap = Blip2Captioner(str(blip2), batch_size=4, max_new_tokens=5)
    got = cap.caption(images)
    want = direct_captions(blip2, images, 5)
    assert got == [" ".join(w.split()) for w in want]
    assert all(len(c.split()) >= 3 for c in got)  # min_new_tokens=3 in the saved generation config
    assert len(set(got)) >= 3  # different images, different captions: the images were read
    assert cap.stats.generated == len(images) and cap.stats.cache_hits == 0


def test_blip2_cache_and_duplicates(blip2: Path, images: list[Path], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    dup = images[:3] + [images[0]]  # the same file twice is captioned once
    first = Blip2Captioner(str(blip2), batch_size=2, max_new_tokens=5, cache_dir=str(cache))
    a = first.caption(dup)
    assert first.stats.generated == 3 and a[3] == a[0]
    assert len(list(cache.glob("*.json"))) == 3
    second = Blip2Captioner(str(blip2), batch_size=2, max_new_tokens=5, cache_dir=str(cache))
    assert second.caption(dup) == a
    assert second.stats.generated == 0 and second.stats.cache_hits == 3
    assert second._model is None  # answered from the cache: the model was never loaded
    # Another generation length is another key.
    third = Blip2Captioner(str(blip2), batch_size=2, max_new_tokens=4, cache_dir=str(cache))
    third.caption(images[:1])
    assert third.stats.generated == 1


def test_blip2_errors(blip2: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="features.images.blip2_path: .* is not a folder"):
        Blip2Captioner(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="cannot load BLIP-2 from"):
        Blip2Captioner(str(tmp_path / "empty")).generate([])
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"bad.jpg: not a readable image"):
        Blip2Captioner(str(blip2)).caption([bad])
    with pytest.raises(DataError, match=r"gone.jpg: cannot read the image"):
        Blip2Captioner(str(blip2)).caption([tmp_path / "gone.jpg"])
    assert build_captioner(ImagesConfig()) is None
    with pytest.raises(ConfigError, match="features.images.batch_size"):
        ImagesConfig(batch_size=0).validate()


def test_resolve_image(tmp_path: Path) -> None:
    assert resolve_image("https://x.org/a/b/p1.jpg", tmp_path) == tmp_path / "p1.jpg"
    assert resolve_image("photos/p2.jpg", tmp_path) == tmp_path / "photos" / "p2.jpg"
    assert resolve_image("/abs/p3.jpg", tmp_path) == Path("/abs/p3.jpg")
    assert resolve_image("file:///abs/p4.jpg", tmp_path) == Path("/abs/p4.jpg")


def test_caption_sums_match_a_slow_reference() -> None:
    rng = np.random.default_rng(0)
    n_cap, n_ent, d = 40, 6, 8
    vecs = rng.uniform(-1, 1, (n_cap, d)).astype(np.float16).astype(np.float32)
    owner = rng.integers(-1, n_ent, n_cap)
    sums, counts = caption_sums(owner, vecs, n_ent)
    for e in range(n_ent):
        sel = vecs[owner == e].astype(np.float64)
        assert counts[e] == len(sel)
        np.testing.assert_array_equal(sums[e], sel.sum(0) if len(sel) else np.zeros(d))


@pytest.mark.parametrize("earlier", [False, True])
def test_slot_means_match_a_slow_reference(earlier: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Per (entity, slot): slot s < G pools the groups other than s (earlier: < s), slot
    G the in-entity captions, plus every `always` caption; in blocks of 3 entities."""
    import features.captions as captions

    monkeypatch.setattr(captions, "SLOT_ENTITIES", 3)
    rng = np.random.default_rng(1 + earlier)
    n_cap, n_ent, slots, d = 60, 7, 5, 6
    vecs = rng.uniform(-1, 1, (n_cap, d)).astype(np.float16).astype(np.float32)
    entity = rng.integers(0, n_ent, n_cap)
    group = rng.integers(-1, slots - 1, n_cap)
    in_entity = rng.random(n_cap) < 0.6
    a_ent = np.array([0, 0, 4, 6])
    a_vecs = rng.uniform(-1, 1, (4, d)).astype(np.float16).astype(np.float32)
    keys, table = slot_means(entity, group, in_entity, vecs, n_ent, slots, earlier, (a_ent, a_vecs))
    for e in range(n_ent):
        for s in range(slots):
            if s == slots - 1:
                use = [c for c in range(n_cap) if entity[c] == e and in_entity[c]]
            else:
                use = [c for c in range(n_cap) if entity[c] == e and group[c] >= 0
                       and (group[c] < s if earlier else group[c] != s)]  # fmt: skip
            pooled = [vecs[c] for c in use] + [a_vecs[j] for j in range(4) if a_ent[j] == e]
            k = keys[e * slots + s]
            assert (k >= 0) == bool(pooled), (e, s)
            if pooled:
                want = np.mean(np.asarray(pooled, np.float64), 0).astype(np.float32).astype(np.float16)
                np.testing.assert_array_equal(table[k], want)
    ent, mask = entity_means(keys, table, slots)
    assert mask.tolist() == (keys[slots - 1 :: slots] >= 0).tolist() and not ent[~mask].any()


def test_build_image_vectors_pools_real_caption_vectors(
    blip2: Path, images: list[Path], tmp_path: Path
) -> None:
    """3 items, 4 review rows: source captions, item photos and review photos, by hand."""
    from features import text

    model = text.model_path("")

    def embed(texts: list[str]) -> np.ndarray:
        return text.embed_texts(texts, model, 8, progress=False)

    for p in images:
        (tmp_path / p.name).write_bytes(p.read_bytes())
    row_user = np.array([0, 0, 1, 1])
    row_item = np.array([0, 1, 0, 2])
    train = np.array([True, True, True, False])
    captioner = Blip2Captioner(str(blip2), max_new_tokens=5)
    slots = 3  # random split, K = 2: rows 0 and 2 in fold 0, row 1 in fold 1
    iv = build_image_vectors(
        item_captions=[["Margherita pizza"], None, ["", "  "]],
        item_images=[None, ["https://cdn.example/p0.png"], None],
        review_images=[["p1.png", "missing.png"], None, ["p2.png"], ["q.jpg"]],
        row_user=row_user,
        row_item=row_item,
        train=train,
        n_users=3,
        n_items=3,
        embed=embed,
        captioner=captioner,
        image_dir=tmp_path,
        dim=384,
        row_group=np.array([0, 1, 0, 2]),
        slots=slots,
        earlier=False,
    )
    caps = dict(
        zip(
            ["p0", "p1", "p2", "q"],
            captioner.caption([tmp_path / f for f in ["p0.png", "p1.png", "p2.png", "q.jpg"]]),
        )
    )
    v = {k: embed([c])[0].astype(np.float64) for k, c in caps.items()}
    v["src"] = embed(["Margherita pizza"])[0].astype(np.float64)
    # (embedded one by one here, in one batch there: float16 rounding may differ by 1 ulp)
    assert iv.meta["images_missing"] == 1 and iv.meta["source_captions"] == 1
    # Entities: training photos only (row 3 is a test row: q.jpg counts nowhere).
    np.testing.assert_allclose(iv.items[0], (v["src"] + v["p1"] + v["p2"]) / 3, atol=2e-4)
    np.testing.assert_allclose(iv.items[1], v["p0"], atol=2e-4)
    assert not iv.items_mask[2] and not iv.items[2].any()  # blank captions are no captions
    np.testing.assert_allclose(iv.users[0], v["p1"], atol=2e-4)
    np.testing.assert_allclose(iv.users[1], v["p2"], atol=2e-4)
    assert iv.users_mask.tolist() == [True, True, False]

    def key(keys: np.ndarray, vecs: np.ndarray, e: int, s: int) -> np.ndarray | None:
        k = keys[e * slots + s]
        return vecs[k].astype(np.float64) if k >= 0 else None

    # Slot 0 (rows 0 and 2, fold 0) leaves fold 0's photos (p1, p2) out: the item's own stays.
    np.testing.assert_allclose(key(iv.item_keys, iv.item_vecs, 0, 0), v["src"], atol=2e-4)
    assert key(iv.user_keys, iv.user_vecs, 0, 0) is None  # user 0's only photo is in fold 0
    np.testing.assert_allclose(key(iv.user_keys, iv.user_vecs, 0, 1), v["p1"], atol=2e-4)
    # Slot 2 (val/test rows): every training photo, never a test review's own.
    np.testing.assert_allclose(key(iv.user_keys, iv.user_vecs, 1, 2), v["p2"], atol=2e-4)
    assert key(iv.item_keys, iv.item_vecs, 2, 2) is None
