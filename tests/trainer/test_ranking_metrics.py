"""Per-user ranking metrics (gAUC, NDCG@K, Recall@K) against the slow loop reference."""

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from ranking_reference import ranking_reference

from trainer.metrics import ranking_report


def _close(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for key, w in want.items():
        if isinstance(w, float) and math.isnan(w):
            assert math.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(w, abs=1e-12), key


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 5), st.integers(0, 1), st.integers(0, 7)), min_size=1, max_size=40),
    st.sampled_from([1, 3, 10]),
)
def test_ranking_report_matches_loop_reference_with_ties(rows, k):
    """Few users, few distinct scores: ties, one-class users and users shorter than K."""
    assume(max(Counter((u, s) for u, _, s in rows).values()) <= 6)  # the reference enumerates ties
    users = [u * 7919 for u, _, _ in rows]  # sparse, unordered ids
    labels = [y for _, y, _ in rows]
    scores = [s / 8.0 for _, _, s in rows]
    got = ranking_report(np.array(users), np.array(labels), np.array(scores), k=k)
    _close(got, ranking_reference(users, labels, scores, k))


def test_hand_computed_example():
    # user 1: scores 0.9 (pos), 0.8 (neg), 0.7 (pos); user 2: one positive only; user 3: negatives only
    users = np.array([1, 1, 1, 2, 3, 3])
    labels = np.array([1, 0, 1, 1, 0, 0])
    scores = np.array([0.9, 0.8, 0.7, 0.1, 0.5, 0.4])
    got = ranking_report(users, labels, scores, k=2)
    assert got["gauc"] == pytest.approx(0.5) and got["gauc_users"] == 1  # user 1 only: 1 of 2 pairs
    ndcg_1 = 1.0 / (1.0 + 1.0 / math.log2(3))  # hit at rank 1 of 2 relevant, K = 2
    assert got["ndcg@2"] == pytest.approx((ndcg_1 + 1.0) / 2)
    assert got["recall@2"] == pytest.approx((0.5 + 1.0) / 2) and got["ranking_users"] == 2


def test_all_tied_scores_give_chance_level():
    users = np.zeros(4, dtype=np.int64)
    got = ranking_report(users, np.array([1, 0, 1, 0]), np.full(4, 0.3), k=2)
    assert got["gauc"] == 0.5 and got["recall@2"] == pytest.approx(0.5)


def test_no_user_with_both_labels_is_nan():
    got = ranking_report(np.array([0, 1]), np.array([1, 0]), np.array([0.2, 0.4]), k=10)
    assert math.isnan(got["gauc"]) and got["gauc_users"] == 0 and got["recall@10"] == 1.0
