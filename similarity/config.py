"""SwingConfig: the typed config of `dlrrec similarity swing` (section `similarity:`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from dlrrec.config import ConfigError


@dataclass
class SwingConfig:
    """SWING item-item and user-user similarity on training positives (DESIGN.md).

    Args:
        run_dir: run root; reads `run_dir/features/`, writes `run_dir/similarity/`.
        input: optional plain interactions table (.parquet or .csv with `user`/`item`
            columns, every row a positive); when set, `run_dir/features` is not read.
        seed: seed of the per-item user sample for items over `max_users_per_item`.
        alpha1, alpha2, beta: SWING smoothing and user-weight exponent.
        min_user_items, max_user_items: users outside this range of distinct items are dropped.
        max_users_per_item: larger items keep a seeded sample of this many users.
        top_k: neighbours kept per anchor.
        memory_budget_gb: peak working memory of the kernel's anchor blocks (the
            output does not depend on it).
        parts: part files per table; 0 picks a number from the graph's size alone, so
            the files never depend on the rank count.
        kernel: "auto" uses the compiled numba kernel when numba is installed, else the
            NumPy one; both give the same bits.
        redis_url: where `dlrrec similarity export-redis` writes (password only from $REDIS_PASSWORD).
        overwrite: replace an existing output made from another config or input.
    """

    run_dir: str
    input: str = ""
    seed: int = 0
    dataset: str = ""
    alpha1: float = 15.0
    alpha2: float = 0.0
    beta: float = 0.3
    min_user_items: int = 2
    max_user_items: int = 1000
    max_users_per_item: int = 1000
    top_k: int = 50
    memory_budget_gb: float = 1.0
    parts: int = 0
    kernel: Literal["auto", "numba", "numpy"] = "auto"
    redis_url: str = ""
    redis_prefix: str = "dlrrec"
    redis_grace_s: int = 3600
    overwrite: bool = False

    def validate(self) -> None:
        if self.top_k <= 0:
            raise ConfigError(f"similarity.top_k: must be > 0, got {self.top_k}")
        if self.top_k > 32767:
            raise ConfigError(
                f"similarity.top_k: must be <= 32767 (rank is int16), got {self.top_k}"
            )
        if self.parts < 0:
            raise ConfigError(f"similarity.parts: must be >= 0 (0 = automatic), got {self.parts}")
        if self.min_user_items < 1 or self.max_user_items < self.min_user_items:
            raise ConfigError(
                "similarity.min_user_items/max_user_items: need 1 <= min_user_items <= max_user_items"
            )
        if self.max_users_per_item < 2:
            raise ConfigError("similarity.max_users_per_item: must be >= 2")
        if self.memory_budget_gb <= 0:
            raise ConfigError("similarity.memory_budget_gb: must be > 0")
        if self.alpha1 < 0 or self.alpha2 < 0 or self.beta < 0:
            raise ConfigError("similarity.alpha1/alpha2/beta: must be >= 0")
        # Configs are copied into _meta.json and shell history; secrets stay in the env.
        if self.redis_url and urlsplit(self.redis_url).password:
            raise ConfigError(
                "similarity.redis_url: must not contain a password; set REDIS_PASSWORD instead"
            )
