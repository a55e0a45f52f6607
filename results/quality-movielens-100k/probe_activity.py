"""Would a row's count of earlier interactions add to the model? A val-only probe (session 17).

python probe_activity.py RUN VAL_PREDICTIONS...

RUN is a random-split run folder with features/; each VAL_PREDICTIONS file is a sealed
run's `train/val_predictions.parquet` on those features. Per val row: how many of its
user's (and its item's) TRAINING rows have a strictly earlier timestamp, the only form the
random split's leakage rule allows (val/test rows read training interactions only). In
ML-100K a user's first ratings are more often positive. A logistic regression on the
model's logit and the log counts, cross-fitted over two halves of the users, gives the AUC
and gAUC the counts would add (`../quality-movielens-100k-temporal/probe_fit.py`, the
probes' shared fit).
Needs pandas and scikit-learn (not project dependencies: a separate venv).
"""

import glob
import os
import sys

import numpy as np
import pyarrow.parquet as pq
from sklearn.metrics import roc_auc_score

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "quality-movielens-100k-temporal"))
from probe_fit import added, gauc, val_logit  # noqa: E402


def load(root: str, split: str):
    cols = ["user_id", "item_id", "timestamp", "label"]
    return pq.read_table(glob.glob(f"{root}/features/examples/{split}/*.parquet"), columns=cols).to_pandas()


def earlier_count(train, rows, key: str) -> np.ndarray:
    """Per row of `rows`: its `key` entity's training rows with a strictly earlier timestamp."""
    times = train.groupby(key).timestamp.apply(lambda s: np.sort(s.to_numpy())).to_dict()
    empty = np.zeros(0)
    pairs = zip(rows[key].to_numpy(), rows.timestamp.to_numpy(), strict=True)
    return np.array([np.searchsorted(times.get(k, empty), t, side="left") for k, t in pairs], dtype=np.float64)


def main(root: str, preds: list[str]) -> None:
    train, val = load(root, "train"), load(root, "val")
    uc, ic = earlier_count(train, val, "user_id"), earlier_count(train, val, "item_id")
    y, users = val.label.to_numpy(), val.user_id.to_numpy()
    print(f"fewer earlier user rows, alone: AUC {roc_auc_score(y, -uc):.4f}, gAUC {gauc(y, -uc, users):.4f}")
    for path in preds:
        z = val_logit(path, users)
        added("user count", f"{path}:", z, users, y, np.log1p(uc)[:, None])
        added("user + item counts", f"{path}:", z, users, y, np.log1p(np.column_stack([uc, ic])))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
