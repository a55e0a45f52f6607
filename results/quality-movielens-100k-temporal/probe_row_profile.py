"""Val-only probe: does a per-row causal content profile carry signal beyond the stats?

python probe_row_profile.py RUN/features [genres,demographics]: a dense MLP over the dense
columns (plus, when named, the genre multi-hot and the occupation / gender / age-bucket
one-hots the model reads as sparse features), with and without profile cosines.
It reads train and val only: test stays sealed.
"""

import glob
import sys

import numpy as np
import pyarrow.parquet as pq
import torch
from scipy.stats import rankdata

root = sys.argv[1]
extra = set(sys.argv[2].split(",")) if len(sys.argv) > 2 else set()
DEMOGRAPHICS = ["occupation", "gender", "age_bucket"]


def auc(y, s):
    r = rankdata(s)
    p = y.sum()
    n = len(y) - p
    return (r[y == 1].sum() - p * (p + 1) / 2) / (p * n)


def gauc(u, y, s):
    tot = w = 0.0
    for uu in np.unique(u):
        m = u == uu
        yy = y[m]
        if 0 < yy.sum() < len(yy):
            tot += auc(yy, s[m]) * len(yy)
            w += len(yy)
    return tot / w


D = [
    "year",
    "age",
    "user_hist_n",
    "user_hist_rating",
    "user_hist_pos",
    "item_hist_n",
    "item_hist_rating",
    "item_hist_pos",
    "user_hist_recent",
    "item_hist_recent",
    "user_hist_bias",
]
parts = []
for code, s in enumerate(["train", "val"]):  # test sealed: never read
    t = pq.read_table(f"{root}/examples/{s}")
    parts.append(
        {
            k: t[k].to_numpy()
            for k in D + DEMOGRAPHICS + ["user_id", "item_id", "label", "timestamp", "user_text_key"]
        }
        | {"split": np.full(t.num_rows, code), "cats": t["categories"].to_pylist()}
    )
A = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k != "cats"}
cats = parts[0]["cats"] + parts[1]["cats"]
N = len(A["label"])
u, i, y, ts = A["user_id"], A["item_id"], A["label"], A["timestamp"]
it = pq.read_table(f"{root}/entities/items.parquet")
V = np.zeros((it["item_id"].to_numpy().max() + 1, 384), np.float64)
V[it["item_id"].to_numpy()] = np.stack(it["item_text"].to_numpy(zero_copy_only=False)).astype(
    np.float64
)
pr = pq.read_table(glob.glob(f"{root}/entities/user_profiles/*")[0])
P = np.zeros((pr["key"].to_numpy().max() + 1, 384))
P[pr["key"].to_numpy()] = np.stack(pr["user_text"].to_numpy(zero_copy_only=False)).astype(
    np.float64
)


def cos(a, b):
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    return np.where((na > 0) & (nb > 0), (a * b).sum(1) / np.maximum(na * nb, 1e-12), 0.0)


iv = V[i]
feat = {"block": cos(P[A["user_text_key"]], iv)}
# per-row causal profiles over strictly earlier rows of any (read) split; val rows read earlier val rows
o = np.lexsort((ts, u))
rowpos = np.zeros(N)
rowall = np.zeros(N)
rowneg = np.zeros(N)
haspos = np.zeros(N)
for seg in np.split(o, np.flatnonzero(np.diff(u[o])) + 1):
    t_ = ts[seg]
    first = np.searchsorted(t_, t_, side="left")
    vv = V[i[seg]]
    yy = y[seg][:, None]
    cp = np.vstack([np.zeros(384), np.cumsum(vv * yy, 0)])[first]
    ca = np.vstack([np.zeros(384), np.cumsum(vv, 0)])[first]
    cn = ca - cp
    rowpos[seg] = cos(cp, vv)
    rowall[seg] = cos(ca, vv)
    rowneg[seg] = cos(cn, vv)
    haspos[seg] = np.concatenate([[0], np.cumsum(y[seg])])[first] > 0
feat |= {"row_pos": rowpos, "row_all": rowall, "row_neg": rowneg}
val = A["split"] == 1
print(
    "val rows with a block profile",
    (np.linalg.norm(P[A["user_text_key"]][val], axis=1) > 0).mean(),
    "with a row profile",
    haspos[val].mean(),
)
X0 = np.stack([A[k] for k in D], 1).astype(np.float64)
if "genres" in extra:
    G = np.zeros((N, max(max(c) for c in cats if c) + 1))
    for r, c in enumerate(cats):
        G[r, c] = 1
    X0 = np.concatenate([X0, G], 1)
if "demographics" in extra:
    X0 = np.concatenate([X0] + [np.eye(A[k].max() + 1)[A[k]] for k in DEMOGRAPHICS], 1)


def run(cols, seed):
    X = np.concatenate([X0] + [feat[c][:, None] for c in cols], 1)
    tr = A["split"] == 0
    X = (X - X[tr].mean(0)) / (X[tr].std(0) + 1e-9)
    torch.manual_seed(seed)
    Xt = torch.tensor(X, dtype=torch.float32)
    yt = torch.tensor(y, dtype=torch.float32)
    m = torch.nn.Sequential(
        torch.nn.Linear(X.shape[1], 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 1),
    )
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    idx = np.flatnonzero(tr)
    best = (0, 0)
    g = np.random.default_rng(seed)
    for ep in range(15):
        g.shuffle(idx)
        for b in range(0, len(idx), 512):
            j = idx[b : b + 512]
            opt.zero_grad()
            torch.nn.functional.binary_cross_entropy_with_logits(
                m(Xt[j]).squeeze(1), yt[j]
            ).backward()
            opt.step()
        with torch.no_grad():
            s = m(Xt[val]).squeeze(1).numpy()
        a = auc(y[val], s)
        if a > best[0]:
            best = (a, gauc(u[val], y[val], s))
    return best


candidates = [[], ["block"], ["row_pos"], ["row_pos", "row_neg"], ["block", "row_pos", "row_neg"]]
for cols in candidates if not extra else [[], ["row_pos", "row_neg"]]:
    r = [run(cols, s) for s in (0, 1)]
    print(
        f"{'+'.join(cols) or 'stats only':24s} val AUC {np.mean([x[0] for x in r]):.4f} ({r[0][0]:.4f} {r[1][0]:.4f})  gAUC {np.mean([x[1] for x in r]):.4f}",
        flush=True,
    )
