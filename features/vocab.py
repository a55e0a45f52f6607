"""Id and vocabulary encodings: entity indices, sparse vocab ids, age buckets.

Entity indices (user_id, item_id) cover every entity of the raw tables and have no
OOV slot: they index the entity tables.  Sparse vocabularies are built from the
training rows only, sorted, and reserve id 0 for values not seen in training (and
for missing values), so val/test rows never add vocabulary.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.schema import AGE_BUCKET_EDGES


def entity_order(ids: pa.Array) -> tuple[np.ndarray, str]:
    """The order that gives entities their contiguous index.

    Ids that are all decimal digits sort numerically (MovieLens user "1" -> 0), by
    (length, text), so no integer parsing can overflow; other ids sort as text.

    Returns:
        (permutation of `ids`, "numeric" | "lexicographic").
    """
    text = np.asarray(ids.to_pylist(), dtype=object).astype(str)
    if len(text) and bool(pc.all(pc.match_substring_regex(ids, r"^[0-9]+$")).as_py()):
        return np.lexsort((text, np.char.str_len(text))), "numeric"
    return np.argsort(text, kind="stable"), "lexicographic"


def lookup(values: pa.Array | pa.ChunkedArray, ids: pa.Array) -> np.ndarray:
    """Positions of `values` in `ids` (int64); every value must be present."""
    idx = pc.index_in(values, value_set=ids)
    if idx.null_count:
        raise ValueError("lookup: a value is not among the ids")
    return np.asarray(idx.to_numpy(zero_copy_only=False), dtype=np.int64)


def build_vocab(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Sorted distinct non-null values: value `vocab[k]` gets id k + 1."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    uniq = pc.unique(values.drop_null())
    return uniq.take(pc.array_sort_indices(uniq))


def encode(values: pa.Array | pa.ChunkedArray, vocab: pa.Array) -> np.ndarray:
    """Vocab ids (int64): 1 + position in `vocab`, 0 for unseen or missing values."""
    idx = pc.index_in(values, value_set=vocab)
    return np.asarray(
        pc.fill_null(pc.add(idx, 1), 0).to_numpy(zero_copy_only=False), dtype=np.int64
    )


def age_buckets(ages: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Age -> bucket 0..6 (<18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+); null stays null."""
    age = np.asarray(pc.fill_null(ages, 0).to_numpy(zero_copy_only=False))
    buckets = np.digitize(age, AGE_BUCKET_EDGES).astype(np.int64)
    mask = np.asarray(pc.is_null(ages).to_numpy(zero_copy_only=False), dtype=bool)
    return pa.array(buckets, mask=mask)


def prefixes(text: pa.Array | pa.ChunkedArray, length: int) -> pa.Array:
    """The first `length` characters of each string (zip code -> region prefix)."""
    out = pc.utf8_slice_codeunits(text, 0, length)
    return out.combine_chunks() if isinstance(out, pa.ChunkedArray) else out
