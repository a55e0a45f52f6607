"""No training row's features reveal its own label within its owner (DESIGN.md, "Leakage
rules"; docs/features.md, "The side channel").

The statistic.  For a feature f, an owner kind (user or item) and the TRAINING rows r
with owner o_r, label y_r and feature value f_r, let g_r be the group of rows whose value
is bit-identical (vectors, scalars and bags alike: what a model that memorises values
can tell apart).  The statistic is the plug-in conditional mutual information

    I(y; g | o) = sum over (o, g, y) of  n_ogy / N * log(n_ogy * n_o / (n_og * n_oy)),

in nats: how much, within an owner, knowing which rows share a row's value tells about
its label.  Leave-one-out profiles are the extreme case: all of a user's negatives share
one profile and each positive has its own, so I(y; g | o) = H(y | o).

At chance.  A feature that reads OTHER rows of the owner moves with the owner's
realised labels (the hypergeometric effect: a positive's out-of-fold share is lower
than a negative's), so "its value is independent of the label" cannot be the null; the
null is about the partition: H0 = "within each owner, which rows share a value is
independent of their labels".  Under H0, shuffling the labels within each owner leaves
the joint law of (labels, groups) unchanged, so R such shuffles give the statistic's
exact null distribution on this data (finite-sample bias of the plug-in estimate
included).  The test asserts z = (observed - null mean) / null sd < Z_MAX: one-sided,
because the side channel is information a model can use, and a partition can carry
LESS than a label-independent one does (strictly-earlier bags on the temporal split:
each run of rows sharing a bag ends at one positive, z about -12), which is no gain.

The data are iid (tests/features/iid_reviews.py): labels are coin flips with a per-user
rate, independent of items, times and each other, so every association a feature shows
here comes from how it is built, not from the data.  The same statistic on the former
leave-one-out profile (`profiles.leave_one_out_profiles`) must, and does, fail.

Tolerance.  Z_MAX = 4: with 11 features x 2 splits, a false alarm under H0 has
probability < 22 * 3.2e-5 (one-sided normal tail), while leave-one-out gives z > 40.
The largest z here is `user_hist_pos` on the random split (about 3.2): two hash folds
with the same (rows, positives) share a value, a small real effect of K-fold rates.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from iid_reviews import iid_tables
from tiny_reviews import read_outputs, row_profiles, vectors, write_raw

from features.config import FeaturesConfig
from features.main import run
from features.profiles import leave_one_out_profiles, positive_sums

Z_MAX = 4.0
SHUFFLES = 200
STATS = [f"{e}_hist_{s}" for e in ("user", "item") for s in ("n", "rating", "pos")]
BAGS = ["user_pos_items", "user_neg_items", "item_pos_users", "item_neg_users"]


def value_groups(x: np.ndarray | list) -> np.ndarray:
    """int64 [n] group id of each row: equal ids <=> bit-identical values (or lists)."""
    if isinstance(x, list):
        ids: dict[tuple, int] = {}
        return np.array([ids.setdefault(tuple(v), len(ids)) for v in x], dtype=np.int64)
    x = np.ascontiguousarray(x.reshape(len(x), -1))
    rows = x.view(np.dtype((np.void, x.dtype.itemsize * x.shape[1]))).ravel()
    return np.unique(rows, return_inverse=True)[1].ravel().astype(np.int64)


def _counts(key: np.ndarray) -> np.ndarray:
    """Per row, how many rows share its key."""
    _, inv, c = np.unique(key, return_inverse=True, return_counts=True)
    return c[inv.ravel()]


def within_owner_information(owner: np.ndarray, group: np.ndarray, label: np.ndarray) -> float:
    """I(label; group | owner) in nats, plug-in (see the module docstring)."""
    g = group.max(initial=0) + 1
    og = owner * g + group
    n_ogy, n_og = _counts(og * 2 + label), _counts(og)
    n_oy, n_o = _counts(owner * 2 + label), _counts(owner)
    return float(np.mean(np.log(n_ogy * n_o / (n_og * n_oy))))


def side_channel_z(
    owner: np.ndarray, group: np.ndarray, label: np.ndarray, rng: np.random.Generator
) -> tuple[float, float, float]:
    """(observed, null mean, z) against SHUFFLES within-owner label permutations."""
    obs = within_owner_information(owner, group, label)
    by_owner = np.argsort(owner, kind="stable")
    null = np.empty(SHUFFLES)
    for s in range(SHUFFLES):
        shuffled = label.copy()
        # sort by (owner, random key): a uniform permutation inside each owner's block
        shuffled[by_owner] = label[np.lexsort((rng.random(len(owner)), owner))]
        null[s] = within_owner_information(owner, group, shuffled)
    return obs, float(null.mean()), (obs - null.mean()) / max(float(null.std()), 1e-12)


@pytest.fixture(scope="module", params=["random", "random-ordered", "temporal"])
def iid_built(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    raw = write_raw(tmp_path_factory.mktemp("iid_raw"), iid_tables(150, 80, 25, seed=0))
    run_dir = tmp_path_factory.mktemp("iid_run")
    split, _, scheme = request.param.partition("-")
    run(FeaturesConfig(
        run_dir=str(run_dir), raw_dir=str(raw), split=split, seed=1,
        rating_stats=True, history_bags=True, history_scheme=scheme or "folds",
    ))  # fmt: skip
    return read_outputs(run_dir)


def training_features(out: dict[str, Any]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """feature -> (owner [n], value groups [n]) over the training rows."""
    train = out["train"]
    owner = {"user": train["user_id"].to_numpy(), "item": train["item_id"].to_numpy()}
    feats = {"user_text": (owner["user"], value_groups(row_profiles(out, "train")))}
    for name in STATS:
        feats[name] = (owner[name.split("_")[0]], value_groups(train[name].to_numpy()))
    for name in BAGS:
        feats[name] = (owner[name.split("_")[0]], value_groups(train[name].to_pylist()))
    return feats


def test_training_features_do_not_reveal_the_own_label(iid_built: dict[str, Any]) -> None:
    label = iid_built["train"]["label"].to_numpy().astype(np.int64)
    rng = np.random.default_rng(0)
    report = {}
    for name, (owner, group) in training_features(iid_built).items():
        report[name] = side_channel_z(owner, group, label, rng)
    assert all(z < Z_MAX for _, _, z in report.values()), report


def test_leave_one_out_profiles_fail_the_same_test(iid_built: dict[str, Any]) -> None:
    """The former random-split profile on the same rows: a side channel the test sees."""
    train = iid_built["train"]
    u, i = train["user_id"].to_numpy(), train["item_id"].to_numpy()
    label = train["label"].to_numpy().astype(np.int64)
    vecs = vectors(iid_built["items"], "item_text").astype(np.float32)
    sums, counts = positive_sums(u, i, label, int(u.max()) + 1, vecs)
    loo = leave_one_out_profiles(u, i, label, sums, counts, vecs).astype(np.float16)
    obs, null, z = side_channel_z(u, value_groups(loo), label, np.random.default_rng(0))
    assert z > 10 * Z_MAX, (obs, null, z)
