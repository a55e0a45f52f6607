"""A user's top-K items: `dlrrec recommend --config configs/movielens-100k.yaml user=196 top=10`.

Ranks the whole catalogue (or the items of `candidates=FILE`, a .parquet/.csv with an
`item` column) with the exported model and prints one line per item, tab-separated:
rank, source item id, score, then the title when the items table has one. Items of the
user's training rows are left out unless `exclude_seen=false`. Ties rank by item row.
An unknown user id is one line and exit 2; with `unknown=cold` (models trained with
`train.id_dropout > 0`) it is ranked as the cold-start user instead.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.distributed.elastic.multiprocessing.errors import record

from dlrrec.config import ConfigError
from dlrrec.entry import run_job
from serve.artifact import Export, read_export
from serve.config import ServeConfig
from serve.score import read_pairs


def seen_items(exp: Export, user_row: int) -> np.ndarray:
    """Item rows of the user's training rows (seen.parquet is sorted by user row)."""
    t = pq.read_table(
        exp.root / "seen.parquet", columns=["item_row"], filters=[("user_row", "=", user_row)]
    )
    return t.column(0).to_numpy()


def top_k(scores: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k best scores, best first, ties by ascending row."""
    return np.lexsort((rows, -scores))[:k]


def recommend(
    exp: Export, user_row: int, items: np.ndarray, k: int, exclude: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(item rows, probabilities) of the top `k` of `items` for `user_row`, leaving out `exclude`."""
    if exclude.size:
        items = items[~np.isin(items, exclude)]
    with torch.no_grad():
        logits = exp.model(
            torch.full((items.size,), user_row, dtype=torch.long), torch.from_numpy(items)
        ).numpy()
    best = top_k(logits, items, k)
    return items[best], 1.0 / (1.0 + np.exp(-logits[best].astype(np.float64)))


def candidate_rows(exp: Export, cfg: ServeConfig) -> np.ndarray:
    if not cfg.candidates:
        return np.arange(exp.items.num_rows, dtype=np.int64)
    path = Path(cfg.candidates)
    ids = pa.concat_arrays([b.column("item") for b in read_pairs(path, ("item",))])
    return np.unique(exp.rows("item", ids, "error", str(path)))


def run(cfg: ServeConfig) -> dict[str, Any]:
    if cfg.user is None or cfg.user == "":
        raise ConfigError("serve.user: required (user=SOURCE_ID)")
    exp = read_export(cfg.run_dir)
    user = str(cfg.user)
    u = int(exp.rows("user", pa.array([user]), cfg.unknown, "serve.user")[0])
    exclude = (
        seen_items(exp, u) if cfg.exclude_seen and u < exp.users.num_rows else np.zeros(0, np.int64)
    )
    rows, probs = recommend(exp, u, candidate_rows(exp, cfg), cfg.top, exclude)
    ids = exp.items.column("item").take(pa.array(rows)).to_pylist()
    titles = (
        exp.items.column("title").take(pa.array(rows)).to_pylist()
        if "title" in exp.items.column_names
        else None
    )
    for r, (item, p) in enumerate(zip(ids, probs), start=1):
        line = f"{r}\t{item}\t{p:.6f}"
        print(
            line
            + (f"\t{titles[r - 1]}" if titles is not None and titles[r - 1] is not None else "")
        )
    return {"user": user, "items": ids, "scores": probs.tolist()}


@record
def main(argv: list[str] | None = None, prog: str = "dlrrec recommend") -> int:
    return run_job(prog, __doc__ or "", ServeConfig, "serve", run, argv)


if __name__ == "__main__":
    sys.exit(main())
