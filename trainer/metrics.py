"""Exact binary-classification and per-user ranking metrics over a whole split (pure NumPy).

Ranks gather their predictions first (see `trainer.distributed.gather_eval`), so the
numbers are those of one process on the same data, not averages of per-rank metrics.
"""

from __future__ import annotations

import numpy as np

_EPS = 1e-7


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with midranks for tied scores).

    Returns NaN when only one class is present.
    """
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    # midranks: average 1-based rank over runs of equal scores
    boundaries = np.flatnonzero(np.diff(s)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [s.size]])
    mid = (starts + ends + 1) / 2.0
    ranks = np.empty(s.size, dtype=np.float64)
    ranks[order] = np.repeat(mid, ends - starts)
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    p = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1 - _EPS)
    y = np.asarray(labels, dtype=np.float64)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def normalized_entropy(labels: np.ndarray, probs: np.ndarray) -> float:
    """Logloss divided by the entropy of the base rate (NE; < 1 beats the prior)."""
    y = np.asarray(labels, dtype=np.float64)
    base = float(np.clip(y.mean(), _EPS, 1 - _EPS))
    h = -(base * np.log(base) + (1 - base) * np.log(1 - base))
    return log_loss(labels, probs) / h


def confusion_at(labels: np.ndarray, probs: np.ndarray, threshold: float) -> dict[str, float]:
    """Accuracy, FPR, precision and recall when predicting positive at p >= threshold."""
    y = np.asarray(labels).astype(bool)
    pred = np.asarray(probs) >= threshold
    tp = float(np.sum(pred & y))
    fp = float(np.sum(pred & ~y))
    tn = float(np.sum(~pred & ~y))
    fn = float(np.sum(~pred & y))
    return {
        "accuracy": (tp + tn) / max(y.size, 1),
        "fpr": fp / max(fp + tn, 1.0),
        "precision": tp / max(tp + fp, 1.0),
        "recall": tp / max(tp + fn, 1.0),
    }


def best_accuracy_threshold(labels: np.ndarray, probs: np.ndarray) -> float:
    """The threshold that maximises accuracy (ties: the smallest such threshold).

    Chosen on validation only, then applied unchanged to test.
    """
    y = np.asarray(labels).astype(bool)
    p = np.asarray(probs, dtype=np.float64)
    order = np.argsort(-p, kind="mergesort")
    ps, ys = p[order], y[order]
    # predicting positive for the top k rows: correct = tp(k) + tn(k)
    tp = np.concatenate([[0], np.cumsum(ys)])
    fp = np.concatenate([[0], np.cumsum(~ys)])
    n_neg = int((~y).sum())
    correct = tp + (n_neg - fp)
    # only cut between distinct scores
    valid = np.ones(ps.size + 1, dtype=bool)
    valid[1:-1] = ps[1:] != ps[:-1]
    k = int(np.argmax(np.where(valid, correct, -1)))
    if k == 0:
        return float(np.nextafter(ps[0], np.inf)) if ps.size else 0.5
    return float(ps[k - 1])


def calibration(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean predicted probability over the observed positive rate (1.0 is calibrated)."""
    y = np.asarray(labels, dtype=np.float64)
    return float(np.mean(probs) / max(y.mean(), _EPS))


def classification_report(
    labels: np.ndarray, probs: np.ndarray, threshold: float
) -> dict[str, float]:
    """Every split-level metric at once, at a given threshold."""
    out = {
        "auc": roc_auc(labels, probs),
        "logloss": log_loss(labels, probs),
        "ne": normalized_entropy(labels, probs),
        "calibration": calibration(labels, probs),
        "threshold": float(threshold),
        "n": int(np.asarray(labels).size),
    }
    out.update(confusion_at(labels, probs, threshold))
    return out


def fpr_at_recall(labels: np.ndarray, probs: np.ndarray, min_recall: float) -> tuple[float, float]:
    """The lowest false-positive rate whose recall is still >= `min_recall`, and its threshold.

    Predicting positive at p >= t, both recall and FPR fall as t rises, so the answer
    is the highest threshold (a distinct score) whose recall reaches `min_recall`.
    FPR alone would be won by a model that predicts nothing positive; the recall
    floor rules that out.

    Returns:
        (fpr, threshold); (nan, nan) when a class is missing.
    """
    y = np.asarray(labels).astype(bool)
    p = np.asarray(probs, dtype=np.float64)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan"), float("nan")
    order = np.argsort(-p, kind="mergesort")
    ps, ys = p[order], y[order]
    # cuts after position k (top k predicted positive), only between distinct scores
    last_of_run = np.ones(ps.size, dtype=bool)
    last_of_run[:-1] = ps[1:] != ps[:-1]
    tp = np.cumsum(ys)[last_of_run]
    fp = np.cumsum(~ys)[last_of_run]
    k = int(np.argmax(tp / n_pos >= min_recall))  # recall reaches 1 at the last cut
    return float(fp[k] / n_neg), float(ps[last_of_run][k])


def selection_value(labels: np.ndarray, probs: np.ndarray, metric: str, min_recall: float) -> float:
    """The validation number that selects the epoch, oriented so that larger is better.

    `auc` -> AUC; `fpr_at_recall` -> minus the FPR at recall >= `min_recall`. NaN
    (a one-class split) never counts as an improvement.
    """
    if metric == "auc":
        return roc_auc(labels, probs)
    if metric == "fpr_at_recall":
        return -fpr_at_recall(labels, probs, min_recall)[0]
    raise ValueError(f"unknown selection metric {metric!r}")


def _group_means(values: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Mean of `values` over each run [start, start + size) of consecutive rows."""
    csum = np.concatenate([[0.0], np.cumsum(values, dtype=np.float64)])
    return (csum[starts + sizes] - csum[starts]) / sizes


def ranking_report(users: np.ndarray, labels: np.ndarray, scores: np.ndarray, k: int = 10) -> dict[str, float]:
    """Per-user ranking metrics over one split's scored rows (docs/evaluation.md).

    Each user's rows are ranked by score, descending; relevance = label. Tied scores have
    no order, so NDCG@K and Recall@K take their expectation over the orders of each tie
    group (a tied row gets the mean discount, and the mean in-top-K share, of the
    positions its group spans); gAUC's per-user AUC counts a tie as half a win.

    Returns:
        gauc: mean of per-user AUC over users with both labels, weighted by their rows;
        gauc_users: how many such users;
        ndcg@K, recall@K: means over users with >= 1 positive (binary gains, log2
            discounts; recall = expected positives in the top K / the user's positives);
        ranking_users: how many such users. NaN where no user qualifies.
    """
    u = np.asarray(users, dtype=np.int64)
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    order = np.lexsort((-s, u))  # by user, then score descending
    u, y, s = u[order], y[order], s[order]
    n = u.size
    new_user = np.ones(n, dtype=bool)
    new_user[1:] = u[1:] != u[:-1]
    user = np.cumsum(new_user) - 1  # dense user index per row
    user_start = np.flatnonzero(new_user)
    pos = np.arange(n) - user_start[user]  # 0-based rank within the user
    new_tie = new_user.copy()
    new_tie[1:] |= s[1:] != s[:-1]
    tie = np.cumsum(new_tie) - 1
    tie_start = np.flatnonzero(new_tie)
    tie_size = np.diff(np.append(tie_start, n))
    in_k = pos < k
    discount = np.where(in_k, 1.0 / np.log2(pos + 2.0), 0.0)
    row_discount = _group_means(discount, tie_start, tie_size)[tie]
    row_in_k = _group_means(in_k.astype(np.float64), tie_start, tie_size)[tie]
    n_users = int(user[-1]) + 1 if n else 0
    n_rows = np.bincount(user, minlength=n_users).astype(np.float64)
    n_pos = np.bincount(user, weights=y, minlength=n_users)
    # gAUC: ascending midrank within the user of a tie group at descending positions [a, a + t)
    midrank = (n_rows[user] - pos[tie_start][tie] - (tie_size[tie] - 1) / 2.0)
    wins = np.bincount(user, weights=np.where(y, midrank, 0.0), minlength=n_users) - n_pos * (n_pos + 1) / 2
    n_neg = n_rows - n_pos
    both = (n_pos > 0) & (n_neg > 0)
    ranked = n_pos > 0
    dcg = np.bincount(user, weights=np.where(y, row_discount, 0.0), minlength=n_users)
    hits = np.bincount(user, weights=np.where(y, row_in_k, 0.0), minlength=n_users)
    ideal = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(k) + 2.0))])
    idcg = ideal[np.minimum(n_pos, k).astype(np.int64)]
    auc = wins[both] / (n_pos[both] * n_neg[both])
    nan = float("nan")
    return {
        "gauc": float(np.sum(auc * n_rows[both]) / np.sum(n_rows[both])) if both.any() else nan,
        "gauc_users": int(both.sum()),
        f"ndcg@{k}": float(np.mean(dcg[ranked] / idcg[ranked])) if ranked.any() else nan,
        f"recall@{k}": float(np.mean(hits[ranked] / n_pos[ranked])) if ranked.any() else nan,
        "ranking_users": int(ranked.sum()),
    }
