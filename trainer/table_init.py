"""Initial embedding-table weights that do not depend on the sharding.

A freshly sharded table is filled by each rank from its own RNG, so the same table
starts differently on 1 rank and on N (and same-shaped row-wise shards start
identical, since every rank seeds alike). Here a row's initial value is a function
of (seed, table, row) alone: rows are drawn in fixed blocks of `BLOCK_ROWS`, block b
of a table from a generator seeded by (seed, table name, b). A shard holding rows
[first, first + n) draws only the blocks it overlaps, one block at a time, so
memory stays one block whatever the table's size.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig

BLOCK_ROWS = 8192


def initial_block(seed: int, table: str, block: int, dim: int, *, low: float, high: float) -> torch.Tensor:
    """Rows [block * BLOCK_ROWS, (block + 1) * BLOCK_ROWS) of `table`: uniform(low, high), [BLOCK_ROWS, dim]."""
    key = np.random.SeedSequence([seed, zlib.crc32(table.encode()), block]).generate_state(1, np.uint64)[0]
    g = torch.Generator().manual_seed(int(key >> 1))
    return torch.empty(BLOCK_ROWS, dim).uniform_(low, high, generator=g)


def fill_initial_rows(
    weight: torch.Tensor, first: int, seed: int, table: str, *, low: float, high: float
) -> None:
    """Write rows [first, first + len(weight)) of `table`'s initial weights into `weight` in place."""
    n, dim = weight.shape
    for b in range(first // BLOCK_ROWS, (first + n + BLOCK_ROWS - 1) // BLOCK_ROWS):
        lo, hi = max(first, b * BLOCK_ROWS), min(first + n, (b + 1) * BLOCK_ROWS)
        block = initial_block(seed, table, b, dim, low=low, high=high)
        weight[lo - first : hi - first].copy_(block[lo - b * BLOCK_ROWS : hi - b * BLOCK_ROWS])


def init_embedding_tables(module: nn.Module, tables: list[EmbeddingBagConfig], seed: int) -> None:
    """Re-initialise every local shard of `tables` in `module` (sharded or not) from
    (seed, table, row), with each table's own init range (torchrec's default:
    +-sqrt(1 / num_embeddings)). The state dict's shards alias the fused weights."""
    by_name = {t.name: t for t in tables}
    with torch.no_grad():
        for key, value in module.state_dict().items():
            parts = key.split(".")
            if len(parts) < 3 or parts[-1] != "weight" or parts[-3] != "embedding_bags" or parts[-2] not in by_name:
                continue
            cfg = by_name[parts[-2]]
            low, high = cfg.get_weight_init_min(), cfg.get_weight_init_max()
            shards = (
                [(int(s.metadata.shard_offsets[0]), s.tensor) for s in value.local_shards()]
                if hasattr(value, "local_shards")
                else [(0, value)]
            )
            for first, weight in shards:
                if weight.numel():
                    fill_initial_rows(weight, first, seed, cfg.name, low=low, high=high)
