"""`dlrrec features build` with the llm and images sections, end to end.

A generated Google Local dump, a local chat-completions stub (features/llm.py speaks
to it over HTTP), a tiny random BLIP-2 and the real MiniLM.  The out-of-fold
summaries are recomputed here independently from the raw records.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from review_source import (
    answering_stub,
    image_names,
    review_records,
    stub_answer,
    write_source,
)
from tiny_blip2 import save_tiny_blip2, write_images
from tiny_reviews import keyed_vectors, read_outputs, vectors

from dlrrec.config import ConfigError, load_config
from features import text
from features.captions import ImagesConfig
from features.config import FeaturesConfig
from features.llm import (
    ABOUT,
    PROMPTS,
    LLMConfig,
    parse_price,
    parse_summary,
    parse_types,
    prompt_input,
)
from features.main import run

K = 3
SEED = 1


@pytest.fixture(scope="module")
def stub() -> Iterator[Any]:
    with answering_stub() as state:
        yield state


@pytest.fixture(scope="module")
def dump(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("review_content")
    reviews, meta = review_records()
    write_images(root / "images", image_names(reviews))
    return {
        "root": root,
        "reviews": reviews,
        "meta": meta,
        "raw": write_source(root / "raw", reviews, meta),
        "blip2": save_tiny_blip2(root / "blip2"),
    }


def content_config(
    dump: dict[str, Any], url: str, run_dir: Path, raw: Path | None = None
) -> FeaturesConfig:
    return FeaturesConfig(
        run_dir=str(run_dir),
        raw_dir=str(raw or dump["raw"]),
        source="google_local",
        seed=SEED,
        llm=LLMConfig(
            base_url=url,
            model="stub-model",
            cache_dir=str(dump["root"] / "llm-cache"),
            price_per_mtok=[1.0, 2.0],
            folds=K,
        ),
        images=ImagesConfig(
            blip2_path=str(dump["blip2"]),
            image_dir=str(dump["root"] / "images"),
            cache_dir=str(dump["root"] / "caption-cache"),
            max_new_tokens=5,
        ),
    )


@pytest.fixture(scope="module")
def built(
    dump: dict[str, Any], stub: Any, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    run_dir = tmp_path_factory.mktemp("run")
    run(content_config(dump, stub.url, run_dir))
    out = read_outputs(run_dir)
    out["run_dir"] = run_dir
    return out


def reference_summary(texts: list[str], kind: str) -> str:
    """What the pipeline must send for these reviews, answered by the stub's own rule."""
    if not texts:
        return ""
    prompt = PROMPTS["summary"].format(about=ABOUT[kind])
    return parse_summary(stub_answer(f"{prompt}\n\nReviews:\n{prompt_input(texts, 12000)}"))


def test_meta_records_provider_usage_and_content(built: dict[str, Any], stub: Any) -> None:
    meta = built["meta"]
    assert meta["content"] == {
        "user": ["user_text", "user_image"],
        "item": ["item_text", "item_image"],
    }
    assert "row_content" not in meta  # no vector is stored per row
    slots = {"text": K + 1, "image": meta["config"]["profile_folds"] + 1}
    assert meta["keyed_content"] == {
        f"{e}_{m}": {"key": f"{e}_{m}_key", "file": f"entities/{e}_{table}", "slots": slots[m],
                     "scheme": "out_of_fold", "entity": e}
        for m, table in (("text", "summaries"), ("image", "images")) for e in ("user", "item")
    }  # fmt: skip
    llm = meta["llm"]
    assert (llm["provider"], llm["model"], llm["folds"]) == ("chat_completions", "stub-model", K)
    usage = llm["usage"]
    # Every request the stub saw is accounted, with its tokens and cost.
    assert usage["requests"] == stub.requests > 0 and usage["retries"] == 0
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (
        stub.prompt_tokens,
        stub.completion_tokens,
    )
    assert usage["cost_usd"] == pytest.approx(
        (stub.prompt_tokens + 2 * stub.completion_tokens) / 1e6
    )
    # Users get one prompt per distinct review set, items three.
    sets = llm["review_sets"]
    assert stub.requests == sets["user"] + 3 * sets["item"]
    images = meta["images"]
    assert images["provider"] == "blip2" and images["images_missing"] == 0
    assert images["generated"] == images["images"] > 0
    assert meta["price"]["source"] == "llm"


def test_rebuild_hits_the_caches(
    built: dict[str, Any], dump: dict[str, Any], stub: Any, tmp_path: Path
) -> None:
    before = stub.requests
    meta = run(content_config(dump, stub.url, tmp_path))
    assert stub.requests == before  # every answer came from the llm cache
    assert meta["llm"]["usage"]["cache_hits"] == before and meta["llm"]["usage"]["requests"] == 0
    assert (
        meta["images"]["generated"] == 0
        and meta["images"]["cache_hits"] == meta["images"]["images"]
    )
    again = read_outputs(tmp_path)
    for split in ("train", "val", "test"):
        assert again[split].equals(built[split])


def rows_of(built: dict[str, Any], dump: dict[str, Any]) -> list[dict[str, Any]]:
    """Every example row with its raw review (matched by (user, item) names)."""
    users = built["users"]["user"].to_pylist()
    items = built["items"]["item"].to_pylist()
    by_pair = {(r["user_id"], r["gmap_id"]): r for r in dump["reviews"]}
    out = []
    for split in ("train", "val", "test"):
        t = built[split]
        cols = {
            c: keyed_vectors(built, split, c)
            for c in ("user_text", "item_text", "user_image", "item_image")
        }
        for k, r in enumerate(
            t.select(["user_id", "item_id", "categories", "price", "has_price",
                      "user_image_key"]).to_pylist()  # fmt: skip
        ):
            rec = by_pair[(users[r["user_id"]], items[r["item_id"]])]
            out.append({**r, **{c: v[k] for c, v in cols.items()}, "split": split, "review": rec})
    return out


def fold(rec: dict[str, Any]) -> int:
    rid = f"{rec['user_id']}|{rec['gmap_id']}|{rec['time']}"
    return int.from_bytes(hashlib.sha256(f"{SEED}\0{rid}".encode()).digest()[:8], "little") % K


def test_out_of_fold_summaries_types_and_price_match_a_reference(
    built: dict[str, Any], dump: dict[str, Any]
) -> None:
    """item_text / user_text / categories / price of every row, recomputed from the raw records."""
    rows = rows_of(built, dump)
    train_recs = [r["review"] for r in rows if r["split"] == "train"]
    order = {id(r): n for n, r in enumerate(dump["reviews"])}
    meta = built["meta"]
    vocab = meta["vocab"]["categories"]
    stats = meta["dense_stats"]["price"]
    model = text.model_path("")
    n_checked = {"train": 0, "other": 0}
    wanted: list[tuple[np.ndarray, str]] = []  # (stored vector, reference summary)
    for r in rows:
        own = r["review"]
        out_of_fold = [
            t
            for t in sorted(train_recs, key=lambda x: order[id(x)])
            if r["split"] != "train" or fold(t) != fold(own)
        ]
        for kind, key, col in (("item", "gmap_id", "item_text"), ("user", "user_id", "user_text")):
            texts = [t["text"] for t in out_of_fold if t[key] == own[key]]
            want = reference_summary(texts, kind)
            if want:
                wanted.append((r[col], want))
            else:
                assert not r[col].any()
        item_texts = [t["text"] for t in out_of_fold if t["gmap_id"] == own["gmap_id"]]
        review_list = prompt_input(item_texts, 12000)
        types = (
            parse_types(stub_answer(f"{PROMPTS['types']}\n\nReviews:\n{review_list}"))
            if item_texts
            else []
        )
        assert [vocab[i - 1] if i else "<oov>" for i in r["categories"]] == [
            t if t in vocab else "<oov>" for t in types
        ]
        price = (
            parse_price(stub_answer(f"{PROMPTS['price']}\n\nReviews:\n{review_list}"))
            if item_texts
            else "none"
        )
        tier = {"cheap": 1.0, "fair": 2.0, "overpriced": 3.0}.get(price)
        assert r["has_price"] == (tier is not None)
        if tier is not None:
            assert r["price"] * stats["std"] + stats["mean"] == pytest.approx(tier, abs=1e-5)
        n_checked["train" if r["split"] == "train" else "other"] += 1
    ref = text.embed_texts([w for _, w in wanted], model, 64, progress=False)
    got = np.stack([v for v, _ in wanted]).astype(np.float32)
    # (embedded in other batches than the build's: float16 rounding may differ by 1 ulp)
    np.testing.assert_allclose(got, ref, atol=5e-4)
    assert len({w for _, w in wanted}) > 5  # the summaries differ between rows
    assert n_checked["train"] > 10 and n_checked["other"] > 3


def test_image_vectors_pool_the_other_slots_photos(
    built: dict[str, Any], dump: dict[str, Any]
) -> None:
    """user_image / item_image of every row, recomputed from the raw records: the mean
    caption vector of the photos of the entity's training reviews in other profile
    folds than the row's (val/test rows: of every training review)."""
    from features.captions import Blip2Captioner

    slots = built["meta"]["keyed_content"]["user_image"]["slots"]
    rows = rows_of(built, dump)
    captioner = Blip2Captioner(str(dump["blip2"]), max_new_tokens=5,
                               cache_dir=str(dump["root"] / "caption-cache"))  # fmt: skip
    with_pic = [r for r in rows if r["review"]["pics"]]
    paths = [dump["root"] / "images" / Path(r["review"]["pics"][0]["url"][0]).name for r in with_pic]
    caps = text.embed_texts(captioner.caption(paths), text.model_path(""), 64, progress=False)
    photo = {id(r): caps[n].astype(np.float64) for n, r in enumerate(with_pic)}
    checked = 0
    for r in rows:
        slot = r["user_image_key"] % slots
        assert (slot == slots - 1) == (r["split"] != "train")
        for col, key in (("user_image", "user_id"), ("item_image", "gmap_id")):
            pooled = [photo[id(t)] for t in with_pic if t["split"] == "train"
                      and t["review"][key] == r["review"][key]
                      and (slot == slots - 1 or t["user_image_key"] % slots != slot)]  # fmt: skip
            if not pooled:
                assert not r[col].any()
                continue
            np.testing.assert_allclose(r[col], np.mean(pooled, 0), atol=5e-4)
            checked += 1
    assert checked > 20


def test_vectors_are_masked_not_faked(built: dict[str, Any]) -> None:
    items = built["items"]
    has = items["has_item_image"].to_numpy(zero_copy_only=False)
    vec = vectors(items, "item_image")
    assert has.any() and not has.all()  # an item whose reviews have no photos exists
    assert not vec[~has].any() and np.abs(vec[has]).sum(1).min() > 0
    for col in ("user_text", "item_text", "user_image", "item_image"):
        # a keyed table holds only keys with a summary; a missing key reads as zeros
        assert (np.abs(vectors(built[f"keyed:{col}"], col)).sum(1) > 0).all()
        assert keyed_vectors(built, "train", col).any(1).any()


def test_trainer_reads_review_vectors_by_key(built: dict[str, Any]) -> None:
    from trainer.data import keyed_table, make_batch, read_training_data

    data = read_training_data(built["run_dir"], ["text", "image"], contrastive=False)
    split = data.read_rows("train")
    towers = ("user_text", "item_text", "user_image", "item_image")
    assert split.user_content == {} and set(split.keys) == set(towers)  # no per-row vector
    rows = np.arange(split.n)
    batch = make_batch(data, split, rows, np.ones(split.n, bool), np.random.default_rng(0), True)
    for col in towers:  # the batch carries the vectors its keys name, from the stores
        want = keyed_vectors(built, "train", col).astype(np.float16)
        np.testing.assert_array_equal(batch.vectors[f"{keyed_table(col)}/row"].numpy(), want)


def test_offline_llm_section_keeps_metadata_price_and_categories(
    dump: dict[str, Any], tmp_path: Path
) -> None:
    raw = dump["raw"]
    run(FeaturesConfig(run_dir=str(tmp_path / "a"), raw_dir=str(raw), source="google_local"))
    meta = run(
        FeaturesConfig(
            run_dir=str(tmp_path / "b"), raw_dir=str(raw), source="google_local", llm=LLMConfig()
        )
    )
    a, b = read_outputs(tmp_path / "a"), read_outputs(tmp_path / "b")
    assert meta["llm"]["provider"] == "offline" and meta["llm"]["usage"]["requests"] == 0
    assert meta["price"]["source"] == "price_tier"
    for split in ("train", "val", "test"):
        for col in ("categories", "price", "has_price"):
            assert a[split][col].equals(b[split][col])
        # extractive summaries: real text vectors, different from the metadata profiles
        assert keyed_vectors(b, split, "item_text").any()


def test_config_sections_load_strictly(tmp_path: Path) -> None:
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(
        "run_dir: r\nfeatures:\n  source: google_local\n  llm: {folds: 4}\n  images: {blip2_path: ''}\n"
    )
    cfg = load_config(FeaturesConfig, cfg_file, [], "features")
    assert cfg.llm is not None and cfg.llm.folds == 4 and cfg.images is not None
    # Nested keys take overrides too, with or without the section name.
    cfg = load_config(
        FeaturesConfig, cfg_file, ["llm.folds=7", "features.images.max_new_tokens=9"], "features"
    )
    assert cfg.llm is not None and cfg.llm.folds == 7
    assert cfg.images is not None and cfg.images.max_new_tokens == 9
    cfg = load_config(FeaturesConfig, None, ["run_dir=r", "llm.base_url=http://h/v1"], "features")
    assert cfg.llm is not None and cfg.llm.base_url == "http://h/v1" and cfg.llm.folds == 5
    with pytest.raises(ConfigError, match=r"features.llm: unknown key 'fold'"):
        load_config(FeaturesConfig, cfg_file, ["llm.fold=3"], "features")
    cfg_file.write_text("run_dir: r\nfeatures:\n  llm: {fold: 4}\n")
    with pytest.raises(ConfigError, match=r"features.llm: unknown key 'fold'"):
        load_config(FeaturesConfig, cfg_file, [], "features")
    cfg_file.write_text("run_dir: r\nfeatures:\n  llm: {folds: 1}\n")
    with pytest.raises(ConfigError, match=r"features.llm.folds: must be >= 2"):
        load_config(FeaturesConfig, cfg_file, [], "features")


def test_yelp_source_captions_are_used_as_they_are(tmp_path: Path) -> None:
    """No BLIP-2 configured: Yelp's photos.json captions, pooled per business, masks elsewhere."""
    fixture = Path(__file__).parents[1] / "fixtures" / "yelp"
    meta = run(
        FeaturesConfig(
            run_dir=str(tmp_path),
            raw_dir=str(fixture),
            source="yelp",
            images=ImagesConfig(cache_dir=""),
        )
    )
    assert meta["images"]["provider"] == "source"
    assert (meta["images"]["source_captions"], meta["images"]["generated"]) == (3, 0)
    # p2 has no caption and no BLIP-2 is configured: counted, left out
    assert (meta["images"]["images"], meta["images"]["images_uncaptioned"]) == (1, 1)
    out = read_outputs(tmp_path)
    names = out["items"]["item"].to_pylist()
    vec = vectors(out["items"], "item_image").astype(np.float64)
    has = out["items"]["has_item_image"].to_pylist()
    captions = ["Margherita pizza with basil", "Salmon nigiri on a wooden board", "Counter seating"]
    ref = text.embed_texts(captions, text.model_path(""), 8, progress=False).astype(np.float64)
    # (p2's empty caption is no caption; the fixture's photos carry no image files)
    np.testing.assert_allclose(vec[names.index("b_pizza")], ref[0], atol=1e-6)
    # the mean is stored as float16: within half a float16 ulp
    np.testing.assert_allclose(vec[names.index("b_sushi")], (ref[1] + ref[2]) / 2, rtol=1e-3)
    for b in ("b_taco", "b_dentist"):
        assert not has[names.index(b)] and not vec[names.index(b)].any()
    # Business photos belong to no review: every row of a business sees all of them.
    for split in ("train", "val", "test"):
        item_ids = out[split]["item_id"].to_numpy()
        np.testing.assert_array_equal(
            keyed_vectors(out, split, "item_image"), vectors(out["items"], "item_image")[item_ids]
        )
        assert not keyed_vectors(out, split, "user_image").any()  # no review photos


def test_fingerprint_ignores_how_keys_and_tracks_the_blip2_model(
    dump: dict[str, Any], tmp_path: Path
) -> None:
    import shutil
    from dataclasses import replace

    from features.main import fingerprint_config

    blip2 = tmp_path / "blip2"
    shutil.copytree(dump["blip2"], blip2)
    base = content_config(dump, "http://h/v1", tmp_path)
    assert base.llm is not None and base.images is not None
    base = replace(base, images=replace(base.images, blip2_path=str(blip2)))
    fp = fingerprint_config(base)
    how = replace(
        base,
        llm=replace(base.llm, cache_dir="elsewhere", max_concurrency=9, timeout_s=5.0),
        images=replace(base.images, cache_dir="elsewhere", batch_size=2, device="cuda"),
    )
    assert fingerprint_config(how) == fp
    assert fingerprint_config(replace(base, llm=replace(base.llm, folds=4))) != fp
    assert fingerprint_config(replace(base, llm=replace(base.llm, model="m2"))) != fp
    save_tiny_blip2(blip2, max_positions=32)  # another model in the same folder
    assert fingerprint_config(base) != fp


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["llm.base_url=http://127.0.0.1:9/v1", "llm.max_retries=0"],
            "http://127.0.0.1:9/v1/chat/completions: connection failed",
        ),
        (
            ["images.blip2_path=/nonexistent/blip2"],
            "features.images.blip2_path: /nonexistent/blip2 is not a folder",
        ),
    ],
    ids=["llm-unreachable", "blip2-missing"],
)
def test_bad_endpoint_or_model_is_one_line_and_no_output(
    overrides: list[str],
    message: str,
    dump: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from features.main import main

    argv = [f"run_dir={tmp_path}", f"raw_dir={dump['raw']}", "source=google_local", *overrides]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]  # (progress lines come before it)
    assert last.startswith("dlrrec features build: error: ") and message in last, last
    assert not (tmp_path / "features").exists()


def test_yelp_photos_without_a_caption_get_a_blip2_one(
    dump: dict[str, Any], tmp_path: Path
) -> None:
    """photos.json p2 (b_pizza) has an empty caption: BLIP-2 captions photos/p2.jpg."""
    import shutil

    from features.captions import Blip2Captioner

    raw = tmp_path / "yelp"
    shutil.copytree(Path(__file__).parents[1] / "fixtures" / "yelp", raw)
    (p2,) = write_images(raw / "photos", ["p2.jpg"])
    meta = run(
        FeaturesConfig(
            run_dir=str(tmp_path / "run"),
            raw_dir=str(raw),
            source="yelp",
            images=ImagesConfig(blip2_path=str(dump["blip2"]), cache_dir="", max_new_tokens=5),
        )
    )
    assert (meta["images"]["source_captions"], meta["images"]["generated"]) == (3, 1)
    caption = Blip2Captioner(str(dump["blip2"]), max_new_tokens=5).caption([p2])[0]
    out = read_outputs(tmp_path / "run")
    names = out["items"]["item"].to_pylist()
    got = vectors(out["items"], "item_image")[names.index("b_pizza")].astype(np.float64)
    ref = text.embed_texts(
        ["Margherita pizza with basil", caption], text.model_path(""), 8, progress=False
    )
    np.testing.assert_allclose(got, ref.astype(np.float64).mean(0), rtol=1e-3, atol=1e-4)
