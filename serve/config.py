"""ServeConfig: the typed config of `dlrrec export`, `dlrrec score` and `dlrrec recommend`
(section `serve:`)."""

from __future__ import annotations

from dataclasses import dataclass

from dlrrec.config import ConfigError


@dataclass
class ServeConfig:
    """From a trained run to predictions.

    Args:
        run_dir: run root; `export` reads `features/` and `train/`, writes `export/`;
            `score` and `recommend` read `export/`.
        input: `score`: the pairs to score (.parquet or .csv with `user` and `item`
            columns of source ids; other columns are copied to the output).
        output: `score`: where the scores go (.parquet or .csv), with a `score` column.
        user: `recommend`: the source user id (quote ids with leading zeros).
        top: `recommend`: how many items to list.
        exclude_seen: `recommend`: leave out the items of the user's training rows.
        candidates: `recommend`: optional .parquet/.csv with an `item` column to rank
            instead of the whole catalogue.
        batch_size: pairs scored per forward call.
        unknown: what `score`/`recommend` do with a source id the features stage never
            saw: `error` (one line, exit 2) or `cold` (the cold-start row; only for models
            trained with `train.id_dropout > 0`).
        redis_url: where `export` also writes the retrieval embeddings (optional;
            password only from $REDIS_PASSWORD).
        overwrite: replace an existing `export/` made from another run.
    """

    run_dir: str
    seed: int = 0
    dataset: str = ""
    input: str = ""
    output: str = ""
    user: str | int | None = None
    top: int = 10
    exclude_seen: bool = True
    candidates: str = ""
    batch_size: int = 4096
    unknown: str = "error"
    redis_url: str = ""
    redis_prefix: str = "dlrrec"
    overwrite: bool = False

    def validate(self) -> None:
        if self.top <= 0:
            raise ConfigError(f"serve.top: must be > 0, got {self.top}")
        if self.batch_size <= 0:
            raise ConfigError(f"serve.batch_size: must be > 0, got {self.batch_size}")
        if self.unknown not in ("error", "cold"):
            raise ConfigError(f"serve.unknown: must be error or cold, got {self.unknown!r}")
