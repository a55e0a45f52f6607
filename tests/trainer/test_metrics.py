import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer.metrics import summarize


def f32(values: list[float]) -> np.ndarray:
    """Scores as the model gives them: float32."""
    return np.asarray(values, dtype=np.float32)


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
    s = f32([b / 6.0 for _, b in rows])  # many ties
    assert summarize(y, s).auc() == pytest.approx(auc_pairwise(y, s), abs=1e-12)


def test_auc_single_class_is_nan():
    assert np.isnan(summarize(np.ones(5), f32([0, 0.25, 0.5, 0.75, 1])).auc())


def test_log_loss_and_confusion():
    y = np.array([1, 0, 1, 0])
    p = f32([0.9, 0.2, 0.4, 0.6])
    s = summarize(y, p, (0.5,))
    q = p.astype(np.float64)
    assert s.logloss() == pytest.approx(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)), rel=1e-12)
    assert s.confusion(0.5) == {"accuracy": 0.5, "fpr": 0.5, "precision": 0.5, "recall": 0.5}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 10)), min_size=1, max_size=40))
def test_best_threshold_maximises_accuracy(rows):
    y = np.array([a for a, _ in rows])
    p = f32([b / 10 for _, b in rows])
    t = summarize(y, p).best_accuracy_threshold()
    best = max(np.mean((p >= c) == y) for c in [*np.unique(p), np.inf])
    assert np.mean((p >= t) == y) == pytest.approx(best)


def test_report_keys():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 100)
    r = summarize(y, rng.random(100).astype(np.float32), (0.5,)).report(0.5)
    assert {"auc", "logloss", "accuracy", "fpr", "precision", "recall", "threshold", "ne"} <= set(r)


def test_roc_curve_area_equals_auc():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    summary = summarize(y, (np.round(rng.random(200) + 0.3 * y, 2) / 1.3).astype(np.float32))
    fpr, tpr = summary.roc_curve()
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
    assert np.trapezoid(tpr, fpr) == pytest.approx(summary.auc(), abs=1e-12)


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
    p = f32([b / 8 for _, b in rows])  # many ties
    fpr, t = summarize(y, p, min_recall=r).fpr_at_recall()
    want_fpr, want_t = fpr_at_recall_brute_force(y, p, r)
    assert fpr == pytest.approx(want_fpr, abs=1e-12)
    assert t == want_t
    assert np.sum((p >= t) & (y == 1)) / np.sum(y == 1) >= r


def test_fpr_at_recall_does_not_reward_predicting_nothing():
    y = np.array([1, 1, 0, 0, 1, 0])
    all_negative = summarize(y, np.zeros(6, np.float32))  # FPR 0 at threshold > 0, but recall 0 there
    assert all_negative.fpr_at_recall() == (1.0, 0.0)
    good = summarize(y, f32([0.9, 0.8, 0.1, 0.2, 0.7, 0.3]))
    assert good.fpr_at_recall() == (0.0, float(np.float32(0.8)))
    assert good.selection_value("fpr_at_recall") > all_negative.selection_value("fpr_at_recall")
    assert np.isnan(summarize(np.ones(3), f32([0, 0.5, 1])).fpr_at_recall()[0])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 1), st.integers(0, 30)), min_size=2, max_size=60).filter(
        lambda r: 0 < sum(a for a, _ in r) < len(r)
    ),
    st.sampled_from([0.3, 0.5, 1.0]),
)
def test_scores_spread_over_many_buckets_match_the_references(rows, r):
    """Scores 2^-b span 31 binades (31 score buckets), with ties: every metric
    combined across buckets equals its whole-array reference."""
    y = np.array([a for a, _ in rows])
    p = f32([2.0**-b for _, b in rows])
    q = p.astype(np.float64)
    s = summarize(y, p, (0.5,), min_recall=r)
    assert s.auc() == pytest.approx(auc_pairwise(y, q), abs=1e-12)
    c = np.clip(q, 1e-7, 1 - 1e-7)
    assert s.logloss() == pytest.approx(-np.mean(y * np.log(c) + (1 - y) * np.log(1 - c)), rel=1e-12)
    t = s.best_accuracy_threshold()
    assert np.mean((q >= t) == y) == max(np.mean((q >= c) == y) for c in [*np.unique(q), np.inf])
    assert s.fpr_at_recall() == pytest.approx(fpr_at_recall_brute_force(y, q, r), abs=1e-12)
    assert s.confusion(0.5)["recall"] == np.sum((q >= 0.5) & (y == 1)) / np.sum(y == 1)


def test_scores_outside_the_unit_interval_are_refused():
    for bad in (np.nan, 1.5, -0.25):
        with pytest.raises(ValueError, match="1 of 3 scores are NaN or outside"):
            summarize(np.array([0, 1, 0]), f32([0.2, bad, 0.4]))
