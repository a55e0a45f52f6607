"""What the val-only probes share (sessions 16-17): gAUC, and a signal's added value.

`val_logit` reads a sealed run's `val_predictions.parquet` as logits; `added` fits a
logistic regression on that logit and the candidate columns x, cross-fitted over two
halves of the users (so no user's rows score a fit they trained), and prints the val AUC
and gAUC before and after. Needs pandas and scikit-learn (a separate venv).
"""

import numpy as np
import pyarrow.parquet as pq
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score


def gauc(y: np.ndarray, s: np.ndarray, users: np.ndarray) -> float:
    """Row-weighted mean per-user AUC over users with both labels."""
    total = n = 0.0
    for u in np.unique(users):
        m = users == u
        if 0 < y[m].sum() < m.sum():
            total += roc_auc_score(y[m], s[m]) * m.sum()
            n += m.sum()
    return total / n


def val_logit(path: str, users: np.ndarray) -> np.ndarray:
    """The run's val logits, checked to be these features' val rows in their order."""
    pr = pq.read_table(path).to_pandas()
    assert (pr.user_id.to_numpy() == users).all(), f"{path}: not these features' val rows"
    p = pr.prob.to_numpy().clip(1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def added(name: str, label: str, z: np.ndarray, users: np.ndarray, y: np.ndarray, x: np.ndarray) -> None:
    """Print val AUC and gAUC of the logit z alone and cross-fitted with the columns x."""
    fold = (users * 2654435761 % 2**32) % 2
    xs, out = np.column_stack([z, x]), np.zeros(y.size)
    for f in (0, 1):
        fit = LogisticRegression(max_iter=1000).fit(xs[fold != f], y[fold != f])
        out[fold == f] = fit.decision_function(xs[fold == f])
    print(
        f"{label} + {name}: AUC {roc_auc_score(y, z):.4f} -> {roc_auc_score(y, out):.4f}, "
        f"gAUC {gauc(y, z, users):.4f} -> {gauc(y, out, users):.4f}"
    )
