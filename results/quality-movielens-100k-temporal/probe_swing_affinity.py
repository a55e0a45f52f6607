"""Would a SWING item-CF score add to the model? A val-only probe (session 16).

python probe_swing_affinity.py RUN VAL_PREDICTIONS...

RUN is a run folder with features/ and similarity/; each VAL_PREDICTIONS file is a sealed
run's `train/val_predictions.parquet` on those features. Per val row, over the user's
history bags (`user_pos_items`, `user_neg_items`): the sum and the mean of the SWING
item-item scores between the row's item and the bag's items, and how many of them are
SWING neighbours of it. A logistic regression on the model's logit and those features,
cross-fitted over two halves of the users, gives the AUC and gAUC the features would add.
Needs pandas and scikit-learn (not project dependencies: a separate venv).
"""

import glob
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from probe_fit import added, val_logit
from sklearn.metrics import roc_auc_score

BAGS = ("user_pos_items", "user_neg_items")


def affinity(root: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features [n, 6]: per bag sum, mean, count; labels; users) of val's rows."""
    val = pq.read_table(glob.glob(f"{root}/features/examples/val/*.parquet")).to_pandas()
    pairs = pa.concat_tables([pq.read_table(f) for f in glob.glob(f"{root}/similarity/item_item/*.parquet")])
    sim = dict(zip(zip(pairs["anchor"].to_pylist(), pairs["neighbor"].to_pylist()), pairs["score"].to_pylist()))
    rows = []
    for row in val.to_dict("records"):
        out = []
        for bag in BAGS:
            s = [sim.get((row["item_id"], x), 0.0) for x in row[bag]]
            out += [sum(s), sum(s) / len(s) if s else 0.0, float(sum(v > 0 for v in s))]
        rows.append(out)
    return np.array(rows), val.label.to_numpy(), val.user_id.to_numpy()


def main(root: str, preds: list[str]) -> None:
    feats, y, users = affinity(root)
    print(f"SWING sum, positive bag - negative bag, alone: AUC {roc_auc_score(y, feats[:, 0] - feats[:, 3]):.4f}")
    for path in preds:
        z = val_logit(path, users)
        for name, x in (("sum, mean, count", np.log1p(feats)), ("mean only", feats[:, [1, 4]] * 10)):
            added(name, f"{path}:", z, users, y, x)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
