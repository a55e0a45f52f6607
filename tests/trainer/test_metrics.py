import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer.metrics import (
    best_accuracy_threshold,
    classification_report,
    confusion_at,
    fpr_at_recall,
    log_loss,
    roc_auc,
    selection_value,
)


def auc_pairwise(y: np.ndarray, s: np.ndarray) -> float:
    """O(n^2) reference: P(score_pos > score_neg) + 0.5 P(tie)."""
    pos, neg = s[y == 1], s[y == 0]
    total = 0.0
    for p in pos:
        total += float(np.sum(p > neg)) + 0.5 * float(np.sum(p == neg))
    return total / (len(pos) * len(neg))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 1), st.integers(0, 6)), min_size=2, max_size=60).filter(
        lambda r: 0 < sum(a for a, _ in r) < len(r)
    )
)
def test_auc_matches_pairwise_reference_with_ties(rows):
    y = np.array([a for a, _ in rows])
    s = np.array([b for _, b in rows], dtype=float) / 3.0  # many ties
    assert roc_auc(y, s) == pytest.approx(auc_pairwise(y, s), abs=1e-12)


def test_auc_single_class_is_nan():
    assert np.isnan(roc_auc(np.ones(5), np.arange(5.0)))


def test_log_loss_and_confusion():
    y = np.array([1, 0, 1, 0])
    p = np.array([0.9, 0.2, 0.4, 0.6])
    assert log_loss(y, p) == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.4, 0.4])))
    c = confusion_at(y, p, 0.5)
    assert c == {"accuracy": 0.5, "fpr": 0.5, "precision": 0.5, "recall": 0.5}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 10)), min_size=1, max_size=40))
def test_best_threshold_maximises_accuracy(rows):
    y = np.array([a for a, _ in rows])
    p = np.array([b for _, b in rows], dtype=float) / 10
    t = best_accuracy_threshold(y, p)
    best = max(np.mean((p >= c) == y) for c in [*np.unique(p), np.inf])
    assert np.mean((p >= t) == y) == pytest.approx(best)


def test_report_keys():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 100)
    r = classification_report(y, rng.random(100), 0.5)
    assert {"auc", "logloss", "accuracy", "fpr", "precision", "recall", "threshold", "ne"} <= set(r)


def test_roc_curve_area_equals_auc():
    from trainer.plots import roc_curve

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.random(200) + 0.3 * y, 2)
    fpr, tpr = roc_curve(y, s)
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(y, s), abs=1e-12)


def fpr_at_recall_brute_force(y: np.ndarray, p: np.ndarray, r: float) -> tuple[float, float]:
    """Try every threshold; keep the lowest FPR whose recall >= r (ties: the higher threshold)."""
    best = (np.inf, np.nan)
    for t in sorted(set(p.tolist()), reverse=True):
        pred = p >= t
        recall = np.sum(pred & (y == 1)) / np.sum(y == 1)
        fpr = np.sum(pred & (y == 0)) / np.sum(y == 0)
        if recall >= r and fpr < best[0]:
            best = (fpr, t)
    return best


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 1), st.integers(0, 8)), min_size=2, max_size=50).filter(
        lambda r: 0 < sum(a for a, _ in r) < len(r)
    ),
    st.sampled_from([0.01, 0.25, 0.5, 0.8, 0.9, 1.0]),
)
def test_fpr_at_recall_matches_brute_force(rows, r):
    y = np.array([a for a, _ in rows])
    p = np.array([b for _, b in rows], dtype=float) / 8  # many ties
    fpr, t = fpr_at_recall(y, p, r)
    want_fpr, want_t = fpr_at_recall_brute_force(y, p, r)
    assert fpr == pytest.approx(want_fpr, abs=1e-12)
    assert t == want_t
    assert np.sum((p >= t) & (y == 1)) / np.sum(y == 1) >= r


def test_fpr_at_recall_does_not_reward_predicting_nothing():
    y = np.array([1, 1, 0, 0, 1, 0])
    all_negative = np.zeros(6)  # FPR 0 at threshold > 0, but recall 0 there
    fpr, t = fpr_at_recall(y, all_negative, 0.5)
    assert (fpr, t) == (1.0, 0.0)
    good = np.array([0.9, 0.8, 0.1, 0.2, 0.7, 0.3])
    assert fpr_at_recall(y, good, 0.5) == (0.0, 0.8)
    assert selection_value(y, good, "fpr_at_recall", 0.5) > selection_value(y, all_negative, "fpr_at_recall", 0.5)
    assert np.isnan(fpr_at_recall(np.ones(3), np.arange(3.0), 0.5)[0])
