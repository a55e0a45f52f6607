"""trainer/layout.py: the sparse features, tables and history slots the trainer builds and
`dlrrec export` rebuilds, from the features' metadata alone."""

import pytest

from dlrrec.config import DataError
from dlrrec.meta import SparseFeatureMeta
from trainer.layout import history_sources, model_sparse, table_groups

SPEC: dict[str, SparseFeatureMeta] = {
    "user_id": {"vocab_size": 5, "multi_valued": False, "max_len": 1},
    "item_id": {"vocab_size": 7, "multi_valued": False, "max_len": 1},
    "genre": {"vocab_size": 3, "multi_valued": False, "max_len": 1},
    "user_pos_items": {"vocab_size": 7, "multi_valued": True, "max_len": 4, "ids_of": "item_id"},
    "item_pos_users": {"vocab_size": 5, "multi_valued": True, "max_len": 4, "ids_of": "user_id"},
}
NAMES = list(SPEC)
TOWERS = [("item", "text"), ("user", "profile"), ("item", "image")]


def test_model_sparse_drops_only_the_bags_under_none() -> None:
    assert model_sparse(SPEC, NAMES, "own") == NAMES
    assert model_sparse(SPEC, NAMES, "shared") == NAMES
    assert model_sparse(SPEC, NAMES, "none") == ["user_id", "item_id", "genre"]


def test_table_groups_own_and_shared() -> None:
    assert table_groups(SPEC, NAMES, "own") == {n: [n] for n in NAMES}
    assert table_groups(SPEC, NAMES, "shared") == {
        "user_id": ["user_id", "item_pos_users"],
        "item_id": ["item_id", "user_pos_items"],
        "genre": ["genre"],
    }


def test_a_shared_bag_needs_its_id_feature() -> None:
    with pytest.raises(DataError, match=r"'user_pos_items' indexes the ids of 'item_id', which is not a sparse"):
        table_groups(SPEC, ["user_id", "user_pos_items"], "shared")


def test_history_sources_pick_the_first_tower_of_the_members_entity() -> None:
    pairs = history_sources(SPEC, TOWERS, ["item_pos_users", "user_pos_items"], "f/_meta.json")
    assert pairs == [("item_pos_users", 1), ("user_pos_items", 0)]
    assert history_sources(SPEC, TOWERS, [], "f/_meta.json") == []


def test_history_sources_refuse_a_missing_bag_or_a_missing_tower() -> None:
    with pytest.raises(DataError, match=r"^f/_meta.json: train.history_content: no history bag 'genre'"):
        history_sources(SPEC, TOWERS, ["genre"], "f/_meta.json")
    with pytest.raises(DataError, match=r"bag 'item_pos_users' lists users, which have no user tower"):
        history_sources(SPEC, TOWERS[:1], ["item_pos_users"], "f/_meta.json")
