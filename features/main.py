"""dlrrec features build --config configs/movielens-100k.yaml [key=value ...]

Raw reviews -> leakage-free examples and entity content tables (stage 1):

    RUN/features/examples/{train,val,test}/part-*.parquet       one row per interaction
    RUN/features/counts/{users,items}.parquet                   each entity's training rows
    RUN/features/entities/{users,items}.parquet                 content vectors, train history
    RUN/features/entities/user_profiles/part-*.parquet          per-(user, slot) profiles
    RUN/features/entities/{user,item}_summaries/                per-(entity, slot) llm summaries
    RUN/features/entities/{user,item}_images/                   per-(entity, slot) caption vectors
    RUN/features/_meta.json                                     vocab sizes, dense stats, ...

A row's features never depend on its own rating: its profile (a key into the
per-(user, slot) table) leaves out the row's hash fold (random split) or reads only
strictly earlier time blocks (temporal split, docs/features.md); vocab,
dense statistics and entity profiles come from training rows only (see
features/profiles.py and DESIGN.md "Leakage rules").
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from torch.distributed.elastic.multiprocessing.errors import record

from dlrrec.artifacts import (
    SCHEMA_VERSION,
    atomic_dir,
    existing_output,
    fingerprinted_config,
    read_meta,
    sha256_json,
    write_json_atomic,
)
from dlrrec.code_version import code_version
from dlrrec.config import to_dict
from dlrrec.entry import run_job
from features import build, examples, history, split, text
from features.config import FeaturesConfig
from features.content import ReviewContent, build_review_content, set_columns
from features.content_rows import ContentInputs
from features.embed_cache import model_id
from features.io import write_table, write_train_counts
from features.owners import OwnerPlan
from features.schema import PROFILE_KEY, PROFILES_FILE, SPARSE_FEATURES
from features.sources import source_input_hashes
from features.workers import Workers

log = logging.getLogger("dlrrec.features")

DEFAULT_FRACTIONS = [0.8, 0.1, 0.1]
DESCRIPTION = "raw reviews -> leakage-free examples and entity content tables"


def fingerprint_config(cfg: FeaturesConfig) -> dict[str, Any]:
    """The config keys that shape the output.

    `raw_dir` is left out because the input is identified by its content hashes, so
    moving the data folder does not invalidate a finished output; `workers` never
    changes the output.
    """
    d = fingerprinted_config(cfg, "features")  # dlrrec/artifacts.py: what is left out, and why
    if cfg.images is not None and cfg.images.blip2_path:
        # The model's identity (file names, sizes, configs), not just its folder's name.
        d["images"]["blip2_model"] = model_id(cfg.images.blip2_path)
    d["split_fractions"] = cfg.split_fractions or DEFAULT_FRACTIONS
    return d


def features_fingerprint(cfg: FeaturesConfig, input_hashes: dict[str, str]) -> str:
    """What the output depends on: the config, the raw inputs' hashes and the features
    package's sources (dlrrec/code_version.py)."""
    code = code_version("features")
    return sha256_json({"config": fingerprint_config(cfg), "inputs": input_hashes, "code": code})


def build_plan(
    cfg: FeaturesConfig, sp: build.Split, keyed: bool, tallies: build.Tallies
) -> OwnerPlan:
    blocks = tallies.item_blocks
    return OwnerPlan(
        temporal=cfg.split == "temporal",
        frozen=cfg.split == "temporal" and cfg.temporal_history == "frozen",
        positive_min_rating=cfg.positive_min_rating,
        profile_folds=cfg.profile_folds,
        block_cuts=tuple(sp.block_cuts),
        keyed=keyed,
        stats_folds=cfg.rating_stats_folds if cfg.rating_stats else None,
        stats_recent=cfg.rating_recent,
        item_block_means=blocks.earlier_means() if blocks is not None else None,
        bag_folds=cfg.history_folds if cfg.history_bags else None,
        bag_max_len=cfg.history_max_len,
        ordered=cfg.split == "random" and cfg.history_scheme == "ordered",
    )


def embed_items(cfg: FeaturesConfig, items: pa.Table) -> np.ndarray:
    """MiniLM over each item's title, genres and year: float16 [I, D]."""
    t0 = time.time()
    texts = text.item_texts(
        items["title"].to_pylist(), items["categories"].to_pylist(), items["year"].to_pylist()
    )
    vecs = text.embed_texts(texts, text.model_path(cfg.text_model), cfg.embed_batch_size,
                            cfg.embed_cache_dir).astype(np.float16)  # fmt: skip
    log.info("features: embedded %d item texts in %.1f s", len(texts), time.time() - t0)
    return vecs


def review_content(
    cfg: FeaturesConfig, inp: build.Input, sp: build.Split, plan: OwnerPlan, t: build.Tallies,
    dim: int, stage: Path, work: Path,
) -> ReviewContent:  # fmt: skip
    """The llm/images content (streamed from the interactions; the keyed tables written
    under `stage`), or an empty content when neither section is set."""
    if inp.reviews is None or (cfg.llm is None and cfg.images is None):
        return ReviewContent()
    model = text.model_path(cfg.text_model)
    x = ContentInputs(
        inp.items, inp.users["user"].combine_chunks(), cfg.split == "temporal", cfg.seed,
        cfg.raw_dir, lambda: text.SortedEncoder(model, cfg.embed_batch_size, cfg.embed_cache_dir),
        dim, plan.profile_slots, t.user_train, t.item_train, int(t.rows[split.TRAIN]),
        work / "content", stage,
    )  # fmt: skip
    return build_review_content(
        cfg.llm, cfg.images, lambda cols: build.content_chunks(inp, sp, plan, cols), x
    )


def write_entities(
    stage: Path, inp: build.Input, outs: build.OwnerOutputs, review: ReviewContent,
    item_vecs: np.ndarray, t: build.Tallies,
) -> None:  # fmt: skip
    """entities/{users,items}.parquet and counts/, from the bucket jobs' files (the profile
    table's parts were written in place by the jobs; the keyed content tables by their
    steps, whose last slots the entity tables read back)."""
    items = examples.items_table(inp.items["item"].combine_chunks(), item_vecs, t.item_train_pos)
    users_of = review.entity_columns("user")

    def user_content(_: int, table: pa.Table) -> pa.Table:
        return set_columns(table, users_of(table["user_id"].to_numpy()))

    build.concat_parquet([Path(f"{p}-users.parquet") for p in outs.user_files],
                         stage / "entities" / "users.parquet", "user_id",
                         user_content if review.keyed else None)  # fmt: skip
    items = set_columns(items, review.entity_columns("item")(np.arange(items.num_rows)))
    write_table(stage / "entities" / "items.parquet", items)
    write_train_counts(stage, t.user_train, t.item_train)


@contextmanager
def step(name: str, seconds: dict[str, float]) -> Iterator[None]:
    """Time a step into `seconds` (logged once the build is done: an error stays one line)."""
    t0 = time.time()
    yield
    seconds[name] = round(time.time() - t0, 1)


def _build(cfg: FeaturesConfig, stage: Path, workers: Workers) -> dict[str, Any]:
    """Every step of the build into `stage`; returns what `_meta.json` says of the data."""
    work = stage / "_work"
    work.mkdir()
    seconds: dict[str, float] = {}
    with step("row index", seconds):
        inp = build.read_input(cfg, work, workers)
    with step("split cut-offs", seconds):
        sp = build.cut_split(cfg, inp.index, cfg.split_fractions or DEFAULT_FRACTIONS)
    with step("spill", seconds):
        by_item = cfg.rating_stats or cfg.history_bags
        tallies, buckets = build.spill_rows(cfg, inp, sp, work, by_item=by_item)
    log.info(
        "features: %d rows, %d users, %d items", inp.index.rows, len(inp.users), len(inp.items)
    )
    item_vecs = embed_items(cfg, inp.items)
    dim = item_vecs.shape[1]
    # an llm section's summaries replace the profile table
    plan = build_plan(cfg, sp, cfg.llm is None, tallies)
    review = review_content(cfg, inp, sp, plan, tallies, dim, stage, work)
    with step(f"bucket jobs ({len(buckets.user_edges) - 1} user buckets)", seconds):
        outs = build.owner_jobs(stage / PROFILES_FILE, buckets, plan, item_vecs.astype(np.float32),
                                inp.users["user"].combine_chunks(), work, workers)  # fmt: skip
    with step("examples", seconds):
        enc = build.encode(cfg, inp, tallies, review)
        written = build.write_rows(inp, sp, plan, enc, outs, review, stage, dim)
    with step("entities", seconds):
        write_entities(stage, inp, outs, review, item_vecs, tallies)
    shutil.rmtree(work)
    log.info("features: steps (s): %s", ", ".join(f"{k} {v}" for k, v in seconds.items()))
    return data_meta(cfg, inp, sp, plan, enc, written, tallies, outs, review, dim)


def data_meta(
    cfg: FeaturesConfig, inp: build.Input, sp: build.Split, plan: OwnerPlan, enc: build.Encoded,
    written: build.Written, t: build.Tallies, outs: build.OwnerOutputs, review: ReviewContent, dim: int,
) -> dict[str, Any]:  # fmt: skip
    """The data half of `_meta.json` (the config half is added by `run`)."""
    vocabs = enc.sparse.vocabs
    sizes = {"user_id": (len(inp.users), 1), "item_id": (len(inp.items), 1),
             "categories": (len(vocabs["categories"]) + 1, written.cat_max),
             **{n: (len(vocabs[n]) + 1, 1) for n in vocabs if n != "categories"}}  # fmt: skip
    rows = build.meta_rows(t)
    return {
        "split": cfg.split,
        "split_fractions": cfg.split_fractions or DEFAULT_FRACTIONS,
        "split_cutoffs": None if sp.random else sp.cuts,
        "block_cuts": None if sp.random else sp.block_cuts,  # serve/recipe.py: rating_bias
        "temporal_history": cfg.temporal_history if cfg.split == "temporal" else None,
        **rows,
        # rows of one (user, item) pair share a split under the random split
        "repeated_pairs": outs.repeated_pairs,
        "train_rating": t.train_rating(),
        "n_users": len(inp.users),
        "n_items": len(inp.items),
        "id_order": inp.id_order,
        "sparse_features": {
            name: {"vocab_size": sizes[name][0], "multi_valued": multi, "max_len": sizes[name][1]}
            for name, multi in SPARSE_FEATURES
        }
        | history_meta(inp, written, rows["rows"]),
        "vocab": vocabs,
        # Id 0 of every vocabulary is the OOV bucket (features/vocab.py).
        "sparse_oov": {"id": 0, "counts": written.oov},
        "categories": {
            "max_categories": cfg.max_categories,
            "truncated_lists": enc.sparse.truncated,
        },
        "dense_features": build.dense_names(enc, plan),
        "dense_stats": enc.dense_stats,
        "price": enc.price_info,
        "skipped_rows": {"policy": cfg.on_bad_rows, **inp.skipped},
        "content": review.content,
        # tower column -> its per-row key column and the per-(entity, slot) table it keys
        "keyed_content": (
            {
                "user_text": {
                    "key": PROFILE_KEY,
                    "file": PROFILES_FILE,
                    "slots": plan.profile_slots,
                    "scheme": "earlier_blocks" if plan.temporal else "out_of_fold",
                }
            }
            if plan.keyed
            else {}
        )
        | review.keyed_meta(),
        **review.meta,
        "content_dim": dim,
    }


def history_meta(inp: build.Input, written: build.Written, rows: dict[str, int]) -> dict[str, Any]:
    out = {}
    for name, (_, member, _) in history.HISTORY_FEATURES.items():
        if name not in written.bag_len:
            continue
        out[name] = {
            "vocab_size": len(inp.users if member == "user" else inp.items),
            "multi_valued": True,
            "max_len": written.bag_max[name],
            "ids_of": f"{member}_id",  # the id feature whose ids the bag lists
            "mean_len": {
                s: round(float(written.bag_len[name][c] / rows[s]) if rows[s] else 0.0, 2)
                for c, s in enumerate(split.SPLITS)
            },
        }
    return out


def run(cfg: FeaturesConfig) -> dict[str, Any]:
    """Build `cfg.run_dir/features/` (or reuse an identical one); returns its `_meta.json`."""
    start = time.time()
    final = Path(cfg.run_dir) / "features"
    input_hashes = source_input_hashes(cfg.source, cfg.raw_dir, cfg.files)
    fingerprint = features_fingerprint(cfg, input_hashes)
    if existing_output(final, fingerprint, cfg.overwrite):
        log.info("features: reusing %s (same config and inputs)", final)
        return read_meta(final)
    with atomic_dir(final) as tmp:
        with Workers(cfg.workers) as workers:
            data = _build(cfg, tmp, workers)
        meta = {
            "schema_version": SCHEMA_VERSION,
            "fingerprint": fingerprint,
            "code_version": code_version("features"),
            "dataset": cfg.dataset,
            "seed": cfg.seed,
            "label_rule": f"rating >= {cfg.positive_min_rating}",
            **data,
            "text_model": cfg.text_model or text.DEFAULT_TEXT_MODEL,
            "input_hashes": input_hashes,
            "config": to_dict(cfg),
            "seconds": round(time.time() - start, 3),
        }
        write_json_atomic(tmp / "_meta.json", meta)
    log.info("features: wrote %s (train/val/test rows %s) in %.1f s", final,
             "/".join(str(meta["rows"][s]) for s in split.SPLITS), meta["seconds"])  # fmt: skip
    return meta


@record
def main(argv: list[str] | None = None, prog: str = "dlrrec features build") -> int:
    # Progress lines go to stderr for this call only (tests call main() many times).
    handler = logging.StreamHandler(sys.stderr)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        return run_job(prog, DESCRIPTION, FeaturesConfig, "features", run, argv)
    finally:
        log.removeHandler(handler)


if __name__ == "__main__":
    sys.exit(main())
