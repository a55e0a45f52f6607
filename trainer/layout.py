"""Which sparse features, tables and history slots a model has, from the features'
metadata and the train config alone.

The trainer builds its model from these, and `dlrrec export` (serve/export.py) rebuilds
the same model from a checkpoint with them, so the two cannot drift apart.

`spec` is `_meta.json`'s `sparse_features`: a history bag is an entry with `ids_of`
(the id feature whose ids it lists).
"""

from __future__ import annotations

from dlrrec.config import DataError
from dlrrec.meta import SparseFeatureMeta

Spec = dict[str, SparseFeatureMeta]


def model_sparse(spec: Spec, names: list[str], history_tables: str) -> list[str]:
    """`names` the model embeds: `train.history_tables: none` drops the history bags
    (they reach the model only as content, if at all)."""
    if history_tables != "none":
        return list(names)
    return [n for n in names if "ids_of" not in spec[n]]


def table_groups(spec: Spec, names: list[str], history_tables: str) -> dict[str, list[str]]:
    """{table: its features}, in first-use order. Every feature has a table of its own;
    with `history_tables: shared` a history bag pools from its id feature's table.

    Raises:
        DataError: a shared bag whose id feature is not among `names`.
    """
    by_table: dict[str, list[str]] = {}
    for name in names:
        table = spec[name].get("ids_of", name) if history_tables == "shared" else name
        by_table.setdefault(table, []).append(name)
    for table, feats in by_table.items():
        if table not in names:
            raise DataError(
                f"features/_meta.json: sparse feature {feats[0]!r} indexes the ids of "
                f"{table!r}, which is not a sparse feature"
            )
    return by_table


def history_sources(spec: Spec, towers: list[tuple[str, str]], bags: list[str], source: str) -> list[tuple[str, int]]:
    """(bag, tower) of each `train.history_content` bag: the first of `towers` (entity,
    column) over the entity the bag's members are, whose weights project the bag.

    Raises:
        DataError: naming `source`: a bag the features lack, or whose members have no tower.
    """
    have = sorted(n for n, s in spec.items() if "ids_of" in s)
    slots = []
    for bag in bags:
        if bag not in have:
            raise DataError(
                f"{source}: train.history_content: no history bag {bag!r} (has {have}; "
                "features.history_bags: true builds them)"
            )
        member = spec[bag]["ids_of"].removesuffix("_id")
        tower = next((t for t, (e, _) in enumerate(towers) if e == member), -1)
        if tower < 0:
            raise DataError(
                f"{source}: train.history_content: bag {bag!r} lists {member}s, "
                f"which have no {member} tower over one vector per {member}"
            )
        slots.append((bag, tower))
    return slots
