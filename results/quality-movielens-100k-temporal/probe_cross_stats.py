"""Would crossed target statistics add to the model? A val-only probe (session 17).

python probe_cross_stats.py RUN VAL_PREDICTIONS...

RUN is a run folder with features/; each VAL_PREDICTIONS file is a sealed run's
`train/val_predictions.parquet` on those features. Per val row, from the TRAINING rows
only (the frozen-history reading on the temporal split; what the random split allows):
- `user_genre`: over the item's genres, the mean of the user's positive share in that
  genre, shrunk to the user's own share (5 pseudo-rows), minus that share;
- `demo_item`: for gender, occupation and age bucket, the item's positive share among
  users of the row's value, shrunk to the item's share (5 pseudo-rows), minus that share.
A logistic regression on the model's logit and those columns, cross-fitted over two halves
of the users, gives the AUC and gAUC they would add. Needs pandas and scikit-learn (not
project dependencies: a separate venv).
"""

import glob
import os
import sys

import numpy as np
import pyarrow.parquet as pq
from probe_fit import added, val_logit

DEMOGRAPHICS = ("gender", "occupation", "age_bucket")
PRIOR = 5.0


def load(root: str, split: str):
    cols = ["user_id", "item_id", "label", "categories", *DEMOGRAPHICS]
    return pq.read_table(glob.glob(f"{root}/features/examples/{split}/*.parquet"), columns=cols).to_pandas()


def user_genre(tr, va, base: float) -> np.ndarray:
    """[n, 1]: the user's shrunk positive share in the row item's genres, net of their own."""
    per = tr[["user_id", "categories", "label"]].explode("categories")
    sums = per.groupby(["user_id", "categories"]).label.agg(["sum", "count"])
    own = tr.groupby("user_id").label.mean()
    rows = va[["user_id", "categories"]].reset_index().explode("categories")
    rows = rows.join(sums, on=["user_id", "categories"]).fillna({"sum": 0, "count": 0})
    mean = rows.user_id.map(own).fillna(base)
    rows["s"] = (rows["sum"] + PRIOR * mean) / (rows["count"] + PRIOR) - mean
    return rows.groupby("index").s.mean().reindex(range(len(va))).fillna(0).to_numpy()[:, None]


def demo_item(tr, va, base: float) -> np.ndarray:
    """[n, 3]: per demographic, the item's shrunk positive share among the row's group, net of its own."""
    own = va.item_id.map(tr.groupby("item_id").label.mean()).fillna(base)
    cols = []
    for d in DEMOGRAPHICS:
        sums = va[[d, "item_id"]].join(tr.groupby([d, "item_id"]).label.agg(["sum", "count"]), on=[d, "item_id"])
        sums = sums.fillna({"sum": 0, "count": 0})
        cols.append(((sums["sum"] + PRIOR * own) / (sums["count"] + PRIOR) - own).to_numpy())
    return np.column_stack(cols)


def main(root: str, preds: list[str]) -> None:
    tr, va = load(root, "train"), load(root, "val")
    base = tr.label.mean()
    feats = {"user_genre": user_genre(tr, va, base), "demo_item": demo_item(tr, va, base)}
    feats["both"] = np.column_stack(list(feats.values()))
    y, users = va.label.to_numpy(), va.user_id.to_numpy()
    for path in preds:
        z = val_logit(path, users)
        run = os.path.basename(os.path.dirname(os.path.dirname(os.path.abspath(path))))
        for name, x in feats.items():
            added(name, run, z, users, y, 10 * x)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
