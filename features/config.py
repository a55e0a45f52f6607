"""FeaturesConfig: the typed config of `dlrrec features build` (section `features:`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dlrrec.config import ConfigError
from features.captions import ImagesConfig
from features.llm import LLMConfig


@dataclass
class FeaturesConfig:
    """Raw reviews -> leakage-free examples.

    Args:
        run_dir: run root; outputs go to `run_dir/features/`.
        raw_dir: folder with the input: the raw-reviews tables (`dlrrec data fetch`
            writes one) for `source: raw`, else the source's own files.
        source: the input format (features/sources/): raw | generic | yelp |
            google_local | amazon2023 | movielens_udata.
        files: {role: file name in raw_dir} overriding a source's default names,
            e.g. {reviews: review.json}.
        columns: source generic only: {raw-reviews column: source column}.
        rating_range: [min, max] accepted ratings; null = the source's own scale.
        seed: seed of the random split.
        dataset: a name recorded in `_meta.json` and the report.
        split: `random` (seeded 80/10/10) or `temporal` (by timestamp).
        split_fractions: train/val/test shares, summing to 1.
        positive_min_rating: label = rating >= this.
        zip_prefix_len: leading characters of the zip code kept as a sparse feature.
        text_model: sentence-transformers model folder; "" = the packaged all-MiniLM-L6-v2.
        embed_batch_size: texts per MiniLM batch.
        embed_cache_dir: on-disk embedding cache (model + text -> float16 vector),
            shared across runs; "" = none.
        max_categories: keep at most this many categories per entity, in source
            order (11 in the paper); longer lists are cut and counted in `_meta.json`.
        on_bad_rows: `error` fails on the first bad review row (rating out of range
            or not finite, blank text, repeated review id); `skip` drops such rows
            and counts them per reason in `_meta.json` (`skipped_rows`).
        llm: review summaries, price and types through an LLM (features/content.py);
            null = off.  `llm: {}` = the offline provider.
        images: image caption vectors (features/captions.py); null = off.
        rating_stats: add the dense columns of features/stats.py: per user and per
            item, the count, mean rating and positive share of the interactions the row
            may read (random split: training rows of the other `rating_stats_folds`
            folds; temporal: strictly earlier interactions of any split).
        rating_stats_folds: K of the random split's out-of-fold statistics (>= 2).
        rating_recent: k > 0 adds `{user,item}_hist_recent` to the rating statistics:
            the mean rating of the entity's k newest interactions the row may read,
            minus their overall mean (temporal split only; 0 = off).
        rating_bias: add `user_hist_bias` to the rating statistics: the mean, over the
            user's interactions the row may read, of the rating minus the item's mean
            rating in earlier time blocks (`profile_blocks`; temporal split only).
        history_bags: add the multi-valued sparse features of features/history.py:
            the items the row's user rated positive / negative and the users who rated
            the row's item positive / negative (random split: training rows of the
            other `history_folds` folds; temporal: strictly earlier interactions of
            any split), sharing the item_id / user_id embedding tables.
        history_folds: K of the random split's out-of-fold bags (>= 2).
        history_max_len: the most members a bag keeps, the newest (>= 1).
        history_scheme: which of its owner's training rows a random-split training row's
            rating statistics and history bags read. `folds`: the rows outside its own
            hash fold (`rating_stats_folds` / `history_folds`). `ordered`: CatBoost's
            ordered statistics, the rows before it in a seeded random order (the row
            hash), so each row reads a prefix; val/test rows read all training rows
            under both. Ignored on the temporal split, where time orders the rows.
        temporal_history: what the temporal split's profiles, rating statistics and
            history bags read. `causal`: every interaction (any split) strictly before
            the row, what serving knows then. `frozen`: training interactions only, so
            no val/test rating reaches any row's features (docs/evaluation.md).
        profile_folds: K of the random split's out-of-fold user profiles (>= 2): a
            training row reads its user's training positives outside its hash fold
            (features/profiles.py, docs/features.md).
        profile_blocks: B global time blocks of the temporal split's profiles (>= 1):
            a row reads its user's positives (any split) in strictly earlier blocks.
        workers: processes for the CPU-bound steps (row hashing, bucket jobs); 0 = one
            per core.  Never changes the output.
        overwrite: replace an existing output made from another config or input.
    """

    run_dir: str
    raw_dir: str = "data/movielens-100k"
    source: Literal["raw", "generic", "yelp", "google_local", "amazon2023", "movielens_udata"] = (
        "raw"
    )
    files: dict[str, str] | None = None
    columns: dict[str, str] | None = None
    rating_range: list[float] | None = None
    seed: int = 0
    dataset: str = "movielens-100k"
    split: Literal["random", "temporal"] = "random"
    split_fractions: list[float] | None = None
    positive_min_rating: float = 4.0
    zip_prefix_len: int = 1
    text_model: str = ""
    embed_batch_size: int = 256
    embed_cache_dir: str = ""
    max_categories: int = 11
    on_bad_rows: Literal["error", "skip"] = "error"
    llm: LLMConfig | None = None
    images: ImagesConfig | None = None
    rating_stats: bool = False
    rating_stats_folds: int = 5
    rating_recent: int = 0
    rating_bias: bool = False
    history_bags: bool = False
    history_folds: int = 5
    history_max_len: int = 100
    temporal_history: Literal["causal", "frozen"] = "causal"
    history_scheme: Literal["folds", "ordered"] = "folds"
    profile_folds: int = 5
    profile_blocks: int = 20
    workers: int = 0
    overwrite: bool = False

    def validate(self) -> None:
        fr = self.split_fractions or [0.8, 0.1, 0.1]
        if len(fr) != 3 or any(f <= 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
            raise ConfigError(
                f"features.split_fractions: expected three positive shares summing to 1, got {fr}"
            )
        if self.zip_prefix_len < 1:
            raise ConfigError("features.zip_prefix_len: must be >= 1")
        if self.max_categories < 1:
            raise ConfigError("features.max_categories: must be >= 1")
        if self.rating_stats_folds < 2:
            raise ConfigError(
                f"features.rating_stats_folds: must be >= 2, got {self.rating_stats_folds}"
            )
        if self.rating_recent < 0:
            raise ConfigError(f"features.rating_recent: must be >= 0, got {self.rating_recent}")
        if self.rating_recent and not (self.rating_stats and self.split == "temporal"):
            raise ConfigError(
                "features.rating_recent: needs rating_stats: true and split: temporal "
                "(the window is the newest interactions before the row)"
            )
        if self.rating_bias and not (self.rating_stats and self.split == "temporal"):
            raise ConfigError(
                "features.rating_bias: needs rating_stats: true and split: temporal "
                "(the item means come from earlier time blocks)"
            )
        if self.history_folds < 2:
            raise ConfigError(f"features.history_folds: must be >= 2, got {self.history_folds}")
        if self.history_max_len < 1:
            raise ConfigError(f"features.history_max_len: must be >= 1, got {self.history_max_len}")
        if self.temporal_history == "frozen" and self.split != "temporal":
            raise ConfigError(
                "features.temporal_history: frozen applies to split=temporal (the random "
                "split's val/test rows already read training interactions only)"
            )
        if self.temporal_history == "frozen" and (self.llm is not None or self.images is not None):
            raise ConfigError(
                "features.temporal_history: frozen covers profiles, rating_stats and "
                "history_bags; the llm/images content reads earlier time blocks (causal) only"
            )
        if self.profile_folds < 2:
            raise ConfigError(f"features.profile_folds: must be >= 2, got {self.profile_folds}")
        if self.profile_blocks < 1:
            raise ConfigError(f"features.profile_blocks: must be >= 1, got {self.profile_blocks}")
        if self.embed_batch_size < 1:
            raise ConfigError("features.embed_batch_size: must be >= 1")
        rr = self.rating_range
        if rr is not None and (len(rr) != 2 or not rr[0] <= rr[1]):
            raise ConfigError(
                f"features.rating_range: expected [min, max] with min <= max, got {rr}"
            )
        from features.sources import check_source_keys

        check_source_keys(self.source, self.files, self.columns)
