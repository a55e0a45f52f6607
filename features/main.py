"""dlrrec features build --config configs/movielens-100k.yaml [key=value ...]

Raw reviews -> leakage-free examples and entity content tables (stage 1):

    RUN/features/examples/{train,val,test}/part-*.parquet       one row per interaction
    RUN/features/counts/{users,items}.parquet                   each entity's training rows
    RUN/features/entities/{users,items}.parquet                 content vectors, train history
    RUN/features/entities/user_profiles.parquet                 per-(user, slot) profiles
    RUN/features/_meta.json                                     vocab sizes, dense stats, ...

A row's features never depend on its own rating: its profile (a key into the
per-(user, slot) table) leaves out the row's hash fold (random split) or reads only
strictly earlier time blocks (temporal split, docs/features.md); vocab,
dense statistics and entity profiles come from training rows only (see
features/profiles.py and DESIGN.md "Leakage rules").
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
from torch.distributed.elastic.multiprocessing.errors import record

from dlrrec.artifacts import (
    SCHEMA_VERSION,
    atomic_dir,
    existing_output,
    read_meta,
    sha256_json,
    write_json_atomic,
)
from dlrrec.code_version import code_version
from dlrrec.config import DataError, to_dict
from dlrrec.entry import run_job
from features import examples, history, profiles, split, stats, text
from features.config import FeaturesConfig
from features.content import build_review_content
from features.dense import price_features, standardize
from features.embed_cache import model_id
from features.io import write_entities, write_examples, write_table, write_train_counts
from features.schema import DENSE_FEATURES, PROFILE_KEY, PROFILES_FILE, SPARSE_FEATURES
from features.sources import read_source, source_input_hashes
from features.vocab import entity_order, lookup

log = logging.getLogger("dlrrec.features")

DEFAULT_FRACTIONS = [0.8, 0.1, 0.1]
SOURCE_DEFAULTS: dict[str, Any] = {
    "source": "raw",
    "files": None,
    "columns": None,
    "rating_range": None,
}
# Keys added since, left out at their defaults for the same reason (see fingerprint_config).
SOURCE_DEFAULTS.update(max_categories=11, on_bad_rows="error")
SOURCE_DEFAULTS.update(llm=None, images=None)
SOURCE_DEFAULTS.update(rating_stats=False, rating_stats_folds=5)
SOURCE_DEFAULTS.update(history_bags=False, history_folds=5, history_max_len=100)
SOURCE_DEFAULTS.update(temporal_history="causal")
# Keys that say where or how, never what: left out of the fingerprint.
LOCATION_KEYS = ("run_dir", "overwrite", "raw_dir", "embed_cache_dir")
# ... and their like inside the llm/images sections (answers and captions are cached by
# model and input, so the cache folder, concurrency or batch size change nothing).
SECTION_HOW_KEYS = {
    "llm": ("cache_dir", "api_key_env", "max_concurrency", "timeout_s", "max_retries"),
    "images": ("cache_dir", "batch_size", "device"),
}
DESCRIPTION = "raw reviews -> leakage-free examples and entity content tables"


def fingerprint_config(cfg: FeaturesConfig) -> dict[str, Any]:
    """The config keys that shape the output.

    `run_dir` and `overwrite` say where and whether to write; `raw_dir` is left out
    because the input is identified by its content hashes, so moving the data
    folder does not invalidate a finished output.
    """
    d = to_dict(cfg)
    for key in LOCATION_KEYS:
        d.pop(key)
    # Source keys at their defaults are left out, so outputs built before they
    # existed keep their fingerprint (and stay reusable).
    for key, default in SOURCE_DEFAULTS.items():
        if d.get(key) == default:
            d.pop(key)
    for section, keys in SECTION_HOW_KEYS.items():
        for key in keys if d.get(section) else ():
            d[section].pop(key)
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


def build_split(
    cfg: FeaturesConfig, timestamps: np.ndarray, users: np.ndarray, items: np.ndarray
) -> tuple[np.ndarray, list[int] | None]:
    fractions = cfg.split_fractions or DEFAULT_FRACTIONS
    if cfg.split == "temporal":
        return split.temporal_split(timestamps, fractions)
    return split.random_split(users, items, fractions, cfg.seed), None


def train_rating(ratings: np.ndarray) -> dict[str, float]:
    """Mean and std of the training rows' ratings (the trainer's rating head scales by them)."""
    r = ratings.astype(np.float64)
    return {"mean": float(r.mean()) if r.size else 0.0, "std": float(r.std()) if r.size else 1.0}


def build_profiles(
    cfg: FeaturesConfig,
    inter: Any,
    row_user: np.ndarray,
    row_item: np.ndarray,
    label: np.ndarray,
    timestamps: np.ndarray,
    train: np.ndarray,
    vecs: np.ndarray,
    sums: np.ndarray,
    counts: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(profiles [U, S, D] float32, each row's key int64 [N] = user * S + slot).

    Random split: slot = the row's hash fold (training rows) or K (val/test rows: all
    training positives).  Temporal: slot = the row's time block; slot B is the entity
    vector (training positives), which no row keys.  See features/profiles.py.
    """
    if cfg.split == "temporal":
        # `temporal_history: frozen`: training positives only (docs/evaluation.md)
        positive = label & train if cfg.temporal_history == "frozen" else label
        slot = profiles.time_blocks(timestamps, cfg.profile_blocks)
        table = profiles.profile_table(
            row_user, row_item, positive, slot, cfg.profile_blocks, len(sums), vecs, earlier=True
        )
        table = np.concatenate([table, profiles.mean_profiles(sums, counts)[:, None]], axis=1)
    else:
        k = cfg.profile_folds
        folds = stats.row_folds(
            inter["user"].to_pylist(), inter["item"].to_pylist(), timestamps, k, cfg.seed
        )
        table = profiles.profile_table(
            row_user, row_item, train & label, folds, k, len(sums), vecs, earlier=False
        )
        slot = np.where(train, folds, k)
    return table, row_user * table.shape[1] + slot


def run(cfg: FeaturesConfig) -> dict[str, Any]:
    """Build `cfg.run_dir/features/` (or reuse an identical one); returns its `_meta.json`."""
    start = time.time()
    final = Path(cfg.run_dir) / "features"
    input_hashes = source_input_hashes(cfg.source, cfg.raw_dir, cfg.files)
    fingerprint = features_fingerprint(cfg, input_hashes)
    if existing_output(final, fingerprint, cfg.overwrite):
        log.info("features: reusing %s (same config and inputs)", final)
        return read_meta(final)

    rating_range = (cfg.rating_range[0], cfg.rating_range[1]) if cfg.rating_range else None
    raw = read_source(
        cfg.source, cfg.raw_dir, cfg.files, cfg.columns, rating_range, cfg.on_bad_rows
    )
    user_perm, user_order = entity_order(raw.users["user"].combine_chunks())
    item_perm, item_order = entity_order(raw.items["item"].combine_chunks())
    users = raw.users.take(user_perm)
    items = raw.items.take(item_perm)
    user_raw = users["user"].combine_chunks()
    item_raw = items["item"].combine_chunks()
    inter = raw.interactions
    row_user = lookup(inter["user"], user_raw)
    row_item = lookup(inter["item"], item_raw)
    timestamps = inter["timestamp"].to_numpy().astype(np.int64)
    label = inter["rating"].to_numpy() >= cfg.positive_min_rating

    codes, cutoffs = build_split(cfg, timestamps, row_user, row_item)
    train = codes == split.TRAIN
    if not train.any():
        raise DataError(
            f"{Path(cfg.raw_dir) / ('interactions.parquet' if cfg.source == 'raw' else '')}: "
            f"the {cfg.split} split leaves no "
            f"training rows out of {len(codes)}; check split_fractions and the timestamps"
        )
    log.info("features: %d rows, %d users, %d items", len(codes), len(user_raw), len(item_raw))

    # Item content: MiniLM over title, genres and year.
    model = text.model_path(cfg.text_model)
    t0 = time.time()
    texts = text.item_texts(
        items["title"].to_pylist(), items["categories"].to_pylist(), items["year"].to_pylist()
    )
    item_vecs = text.embed_texts(texts, model, cfg.embed_batch_size, cfg.embed_cache_dir).astype(
        np.float16
    )
    dim = item_vecs.shape[1]
    log.info("features: embedded %d item texts in %.1f s", len(texts), time.time() - t0)

    # Profiles average exactly the stored (float16) item vectors.
    vecs = item_vecs.astype(np.float32)
    train_pos = train & label
    sums, counts = profiles.positive_sums(row_user, row_item, train_pos, len(user_raw), vecs)
    # temporal split: the interactions a row's history may read (docs/evaluation.md)
    readable = train if cfg.temporal_history == "frozen" else None
    profile_rows, row_key = build_profiles(
        cfg, inter, row_user, row_item, label, timestamps, train, vecs, sums, counts
    )

    # LLM summaries/price/types (out of fold) and image captions, when configured.
    review = build_review_content(
        cfg.llm, cfg.images, raw, items, user_raw.to_pylist(), row_user, row_item, train,
        timestamps, cfg.split == "temporal", cfg.seed, cfg.raw_dir,
        lambda t: text.embed_texts(t, model, cfg.embed_batch_size, cfg.embed_cache_dir), dim,
    )  # fmt: skip

    sparse, vocabs, cats_truncated = examples.sparse_columns(
        users, items, row_user, row_item, train, cfg.zip_prefix_len, cfg.max_categories
    )
    if review.row_types is not None:
        sparse["categories"], vocabs["categories"], cats_truncated = review.categories(
            train, cfg.max_categories
        )
    dense_raw = examples.dense_inputs(users, items, row_user, row_item)
    dense, dense_stats = {}, {}
    for name in DENSE_FEATURES:
        dense[name], mean, std = standardize(dense_raw[name], train)
        dense_stats[name] = {"mean": mean, "std": std}
    price, price_info = price_features(*review.price_inputs(items, row_item), train)
    dense.update(price)
    if price:
        dense_stats["price"] = {"mean": price_info["mean"], "std": price_info["std"]}
    if cfg.rating_stats:
        folds = stats.row_folds(
            inter["user"].to_pylist(), inter["item"].to_pylist(), timestamps,
            cfg.rating_stats_folds, cfg.seed,
        )  # fmt: skip
        dense.update(
            stats.rating_stats(
                row_user,
                row_item,
                inter["rating"].to_numpy(),
                label,
                timestamps,
                train,
                cfg.split == "temporal",
                folds,
                cfg.rating_stats_folds,
                cfg.positive_min_rating,
                readable,
            )  # fmt: skip
        )

    history_features: dict[str, dict[str, Any]] = {}
    bags: dict[str, Any] = {}
    if cfg.history_bags:
        bags = history.history_bags(
            row_user, row_item, label, timestamps, train, cfg.split == "temporal",
            stats.row_folds(
                inter["user"].to_pylist(), inter["item"].to_pylist(), timestamps,
                cfg.history_folds, cfg.seed,
            ),
            cfg.history_folds, cfg.history_max_len, readable,
        )  # fmt: skip
        for name, (_, member, _) in history.HISTORY_FEATURES.items():
            lengths = np.asarray(pc.list_value_length(bags[name]))
            history_features[name] = {
                "vocab_size": len(user_raw if member == "user" else item_raw),
                "multi_valued": True,
                "max_len": int(lengths.max(initial=0)),
                "ids_of": f"{member}_id",  # the id feature whose ids the bag lists
                "mean_len": {
                    s: round(float(lengths[codes == c].mean()) if (codes == c).any() else 0.0, 2)
                    for c, s in enumerate(split.SPLITS)
                },
            }

    columns = {
        "user_id": row_user,
        "item_id": row_item,
        "label": label.astype(np.float32),
        "rating": inter["rating"].to_numpy().astype(np.float32),
        "timestamp": timestamps,
        **sparse,
        **dense,
        PROFILE_KEY: row_key,
        **bags,
    }
    # An llm section's per-row summary vectors replace the MiniLM profiles (content.py).
    keyed = "user_text" not in review.row_columns
    tables = examples.example_tables(codes, columns, dim, list(dense), list(bags), keyed)
    items_out = examples.items_table(
        item_raw, item_vecs, np.bincount(row_item[train_pos], minlength=len(item_raw))
    )
    users_out = examples.users_table(user_raw, profiles.mean_profiles(sums, counts), counts)
    tables = review.add_to_examples(tables, codes)
    users_out, items_out = review.add_to_entities(users_out, items_out)

    cat_lengths = np.asarray(pc.list_value_length(sparse["categories"]).fill_null(0))
    sizes = {
        "user_id": (len(user_raw), 1),
        "item_id": (len(item_raw), 1),
        "categories": (len(vocabs["categories"]) + 1, int(cat_lengths.max(initial=0))),
        **{name: (len(vocabs[name]) + 1, 1) for name in vocabs if name != "categories"},
    }
    meta = {
        "schema_version": SCHEMA_VERSION,
        "fingerprint": fingerprint,
        "code_version": code_version("features"),
        "dataset": cfg.dataset,
        "split": cfg.split,
        "split_fractions": cfg.split_fractions or DEFAULT_FRACTIONS,
        "split_cutoffs": cutoffs,
        "temporal_history": cfg.temporal_history if cfg.split == "temporal" else None,
        "seed": cfg.seed,
        "label_rule": f"rating >= {cfg.positive_min_rating}",
        "rows": {s: t.num_rows for s, t in tables.items()},
        "positives": {s: int(np.sum(t["label"].to_numpy())) for s, t in tables.items()},
        # rows of one (user, item) pair share a split under the random split
        "repeated_pairs": split.repeated_pairs(row_user, row_item),
        "train_rating": train_rating(inter["rating"].to_numpy()[train]),
        "n_users": len(user_raw),
        "n_items": len(item_raw),
        "id_order": {"user": user_order, "item": item_order},
        "sparse_features": {
            name: {"vocab_size": sizes[name][0], "multi_valued": multi, "max_len": sizes[name][1]}
            for name, multi in SPARSE_FEATURES
        }
        | history_features,
        "vocab": vocabs,
        # Id 0 of every vocabulary is the OOV bucket (features/vocab.py).
        "sparse_oov": {"id": 0, "counts": examples.oov_counts(sparse, codes)},
        "categories": {"max_categories": cfg.max_categories, "truncated_lists": cats_truncated},
        "dense_features": list(dense),
        "dense_stats": dense_stats,
        "price": price_info,
        "skipped_rows": {"policy": cfg.on_bad_rows, **raw.skipped},
        "content": review.content,
        "row_content": review.row_content,
        # tower column -> its per-row key column and the per-(entity, slot) table it keys
        "keyed_content": (
            {
                "user_text": {
                    "key": PROFILE_KEY,
                    "file": PROFILES_FILE,
                    "slots": profile_rows.shape[1],
                    "scheme": "earlier_blocks" if cfg.split == "temporal" else "out_of_fold",
                }
            }
            if keyed
            else {}
        ),  # fmt: skip
        **review.meta,
        "content_dim": dim,
        "text_model": cfg.text_model or text.DEFAULT_TEXT_MODEL,
        "input_hashes": input_hashes,
        "config": to_dict(cfg),
    }
    with atomic_dir(final) as tmp:
        for name, table in tables.items():
            write_examples(tmp, name, table)
        write_entities(tmp, users_out, items_out)
        if keyed:
            write_table(tmp / PROFILES_FILE, examples.profiles_table(profile_rows))
        write_train_counts(
            tmp, np.bincount(row_user[train], minlength=len(user_raw)),
            np.bincount(row_item[train], minlength=len(item_raw)),
        )  # fmt: skip
        meta["seconds"] = round(time.time() - start, 3)
        write_json_atomic(tmp / "_meta.json", meta)
    log.info(
        "features: wrote %s (train/val/test rows %s) in %.1f s",
        final,
        "/".join(str(meta["rows"][s]) for s in split.SPLITS),
        meta["seconds"],
    )
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
