"""Assemble the example and entity tables from indexed raw tables (pure, no I/O).

Shapes: N = interaction rows, U = users, I = items, D = content dim.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.schema import (
    AGE_BUCKET_NAMES,
    DENSE_FEATURES,
    examples_schema,
    items_entity_schema,
    users_entity_schema,
)
from features.split import SPLITS
from features.vocab import age_buckets, build_vocab, encode, prefixes


def _numpy(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(array.to_numpy(zero_copy_only=False))


def _lists(lengths: np.ndarray, values: np.ndarray) -> pa.ListArray:
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.int64()))


def vectors(x: np.ndarray) -> pa.FixedSizeListArray:
    """[n, D] -> fixed_size_list<float16>[D] (content vectors are stored as float16)."""
    flat = pa.array(np.ascontiguousarray(x, dtype=np.float16).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, x.shape[1])


def cap_lists(lists: pa.Array | pa.ChunkedArray, cap: int) -> tuple[pa.ListArray, int]:
    """Drop null values, then keep the first `cap` values of each list (source order).

    A null list becomes an empty one: "no categories" is a length-0 bag in the KJT,
    never a pad id.

    Returns:
        (list<string> [n], number of lists that were cut).
    """
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    lengths = _numpy(pc.fill_null(pc.list_value_length(lists), 0)).astype(np.int64)
    flat = pc.list_flatten(lists)
    owner = np.repeat(np.arange(len(lengths)), lengths)
    valid = _numpy(pc.is_valid(flat)).astype(bool)
    owner, flat = owner[valid], flat.filter(pa.array(valid))
    lengths = np.bincount(owner, minlength=len(lengths))
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    keep = np.arange(len(owner)) - starts[owner] < cap
    offsets = np.concatenate([[0], np.cumsum(np.minimum(lengths, cap))]).astype(np.int32)
    capped = pa.ListArray.from_arrays(pa.array(offsets), flat.filter(pa.array(keep)))
    return capped, int(np.sum(lengths > cap))


def oov_counts(
    sparse: dict[str, np.ndarray | pa.Array], codes: np.ndarray
) -> dict[str, dict[str, int]]:
    """Per sparse feature and split, how many ids are the OOV id 0.

    Single-valued features count rows (id 0 = a value unseen in training, or missing);
    `categories` counts list values (a missing list is empty, so only unseen values).
    """
    out: dict[str, dict[str, int]] = {}
    for name, col in sparse.items():
        if isinstance(col, pa.Array):  # list<int64>: the split code of each value's row
            lengths = _numpy(pc.fill_null(pc.list_value_length(col), 0)).astype(np.int64)
            zero = _numpy(pc.equal(pc.list_flatten(col), 0)).astype(bool)
            value_codes = np.repeat(codes, lengths)
        else:
            zero, value_codes = np.asarray(col) == 0, codes
        per_split = np.bincount(value_codes[zero], minlength=len(SPLITS))
        out[name] = {s: int(per_split[c]) for c, s in enumerate(SPLITS)}
    return out


@dataclass
class EntitySparse:
    """Each entity's vocab-encoded attributes; a row takes its user's and its item's."""

    user: dict[str, np.ndarray]  # name -> int64 [U] ids
    categories: pa.ListArray  # [I] list<int64> ids
    vocabs: dict[str, list]  # name -> values, id k + 1 = values[k]
    truncated: int  # items whose category list was cut to `max_categories`

    def rows(self, row_user: np.ndarray, row_item: np.ndarray) -> dict[str, np.ndarray | pa.Array]:
        out: dict[str, np.ndarray | pa.Array] = {
            "categories": self.categories.take(pa.array(row_item))
        }
        return out | {name: ids[row_user] for name, ids in self.user.items()}


def entity_sparse(
    users: pa.Table,
    items: pa.Table,
    train_users: np.ndarray,
    train_items: np.ndarray,
    zip_prefix_len: int,
    max_categories: int = 11,
) -> EntitySparse:
    """Vocab-encode the categorical attributes of every user and item.

    Vocabularies hold the values of the entities in TRAINING rows only (sorted), so
    nothing about val/test rows shapes the id space.  Id 0 is every feature's OOV
    bucket: a value not seen in training (or, single-valued, a missing one).
    `categories` is multi-valued: each item keeps its first `max_categories` values
    and the bag's length is the list's own length (no pad id).

    Args:
        users, items: entity tables in index order (RAW_USERS / RAW_ITEMS columns).
        train_users, train_items: int64 indices of the entities with training rows.
        zip_prefix_len: characters of the zip code kept.
        max_categories: the cap on an item's categories.
    """
    vocabs: dict[str, list] = {}
    cats, truncated = cap_lists(items["categories"], max_categories)
    lengths = _numpy(pc.fill_null(pc.list_value_length(cats), 0)).astype(np.int64)
    flat = pc.list_flatten(cats)
    owner = np.repeat(np.arange(len(lengths)), lengths)
    vocab = build_vocab(flat.filter(pa.array(np.isin(owner, train_items))))
    item_lists = _lists(lengths, encode(flat, vocab))
    vocabs["categories"] = vocab.to_pylist()

    user_values = {
        "occupation": users["occupation"].combine_chunks(),
        "gender": users["gender"].combine_chunks(),
        "age_bucket": age_buckets(users["age"]),
        "zip_prefix": prefixes(users["zip"], zip_prefix_len),
    }
    user_ids = {}
    for name, values in user_values.items():
        vocab = build_vocab(values.take(pa.array(train_users)))
        user_ids[name] = encode(values, vocab)
        vocabs[name] = vocab.to_pylist()
    vocabs["age_bucket"] = [AGE_BUCKET_NAMES[b] for b in vocabs["age_bucket"]]
    return EntitySparse(user_ids, item_lists, vocabs, truncated)


def dense_inputs(users: pa.Table, items: pa.Table) -> dict[str, tuple[str, np.ndarray]]:
    """Raw dense values per entity, float64 with NaN for missing: {name: (owner, values)}
    (item year [I], user age [U])."""
    year = _numpy(pc.cast(items["year"], pa.float64()).fill_null(np.nan))
    age = _numpy(pc.cast(users["age"], pa.float64()).fill_null(np.nan))
    return {"year": ("item", year), "age": ("user", age)}


def example_tables(
    codes: np.ndarray,
    columns: dict[str, np.ndarray | pa.Array],
    dim: int,
    dense: Sequence[str] = DENSE_FEATURES,
    bags: Sequence[str] = (),
    profile_key: bool = True,
) -> dict[str, pa.Table]:
    """Cut full-length columns into one table per split, rows in input order.

    Args:
        codes: int8 [N] split codes (0 train, 1 val, 2 test).
        columns: every column of `examples_schema(dim, dense, bags)`, length N
        dense: the dense column names.
        bags: the history bag columns (list<int64>), if any.
        profile_key: write the `user_text_key` column (off when an llm section writes
            per-row summary vectors instead).
    """
    schema = examples_schema(dim, dense, bags, profile_key)
    out = {}
    for code, split in enumerate(SPLITS):
        idx = np.nonzero(codes == code)[0]
        arrays = []
        for field in schema:
            col = columns[field.name]
            if isinstance(col, pa.Array):
                arrays.append(col.take(pa.array(idx)))
            else:
                arrays.append(pa.array(col[idx], field.type))
        out[split] = pa.Table.from_arrays(arrays, schema=schema)
    return out


def items_table(item_raw: pa.Array, item_vecs: np.ndarray, n_train_pos: np.ndarray) -> pa.Table:
    n = len(item_raw)
    return pa.Table.from_arrays(
        [
            pa.array(np.arange(n, dtype=np.int64)),
            item_raw,
            vectors(item_vecs),
            pa.array(n_train_pos.astype(np.int32)),
        ],
        schema=items_entity_schema(item_vecs.shape[1]),
    )


def users_table(user_raw: pa.Array, profiles: np.ndarray, counts: np.ndarray) -> pa.Table:
    n = len(user_raw)
    return pa.Table.from_arrays(
        [
            pa.array(np.arange(n, dtype=np.int64)),
            user_raw,
            vectors(profiles),
            pa.array(counts.astype(np.int32)),
            pa.array(counts > 0),
        ],
        schema=users_entity_schema(profiles.shape[1]),
    )
