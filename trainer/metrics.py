"""Exact split metrics from per-score counts, and per-user ranking metrics (pure NumPy).

Scores are float32 probabilities in [0, 1] (the model's sigmoid), so a split's scores
take at most 2^30 distinct values. Every split-level metric (AUC with a tie as half a
win, logloss, calibration, the accuracy-maximising threshold, the FPR at a recall floor,
the confusion at a threshold, the ROC curve) is a function of how many positive and
negative rows hold each distinct score. The bit pattern of a non-negative float32 is
monotone in its value, so the key space is cut into `N_SCORE_BUCKETS` ranges of
2^BUCKET_BITS keys: one bucket is counted exactly in bounded memory whatever the number
of rows in it, and its terms need only the totals of the buckets below it.
`trainer.evaluation` streams a split's scores through disk bucket by bucket, so any
split is evaluated exactly in bounded memory, and any number of ranks gives the same
numbers bit for bit: the buckets are always combined in key order. `summarize` does the
same for arrays in memory (tests, tools).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

_EPS = 1e-7
BUCKET_BITS = 18
_ONE_KEY = 0x3F800000  # the float32 bit pattern of 1.0
N_SCORE_BUCKETS = (_ONE_KEY >> BUCKET_BITS) + 1
LABEL_BIT = np.uint32(1 << 31)  # packed = key | label << 31 (keys of [0, 1] are < 2^30)
ROC_POINTS = 64  # at most this many ROC points a bucket (the plot's resolution)


def pack_scores(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """uint32 per row: the score's float32 bit pattern with the label in the top bit.

    Raises:
        ValueError: a score is NaN or outside [0, 1] (a diverged model).
    """
    keys = np.ascontiguousarray(probs, dtype=np.float32).view(np.uint32)
    if keys.size and int(keys.max()) > _ONE_KEY:  # NaN, > 1 and negative keys are all larger
        bad = int(np.sum(keys > _ONE_KEY))
        raise ValueError(f"{bad} of {keys.size} scores are NaN or outside [0, 1]")
    return keys | (np.asarray(labels).astype(bool).astype(np.uint32) << np.uint32(31))


def bucket_of(packed: np.ndarray) -> np.ndarray:
    return (packed & ~LABEL_BIT) >> np.uint32(BUCKET_BITS)


@dataclass(frozen=True)
class ValueCounts:
    """Positive and negative rows at each distinct score of one bucket, ascending."""

    values: np.ndarray  # float32, strictly increasing
    pos: np.ndarray  # int64
    neg: np.ndarray  # int64


def count_bucket(bucket: int, chunks: Iterable[np.ndarray]) -> ValueCounts:
    """Exact counts of one bucket's packed scores, read chunk by chunk. The (score,
    label) pairs of a bucket take at most 2^(BUCKET_BITS + 1) values, so the running
    counts stay bounded (8 MiB) whatever the number of rows."""
    low = np.uint32((1 << BUCKET_BITS) - 1)
    slots, counts = np.zeros(0, np.int64), np.zeros(0, np.int64)
    for packed in chunks:
        slot = ((packed & low).astype(np.int64) << 1) | (packed >> np.uint32(31)).astype(np.int64)
        s, c = np.unique(slot, return_counts=True)
        slots, counts = _add_counts(np.concatenate([slots, s]), np.concatenate([counts, c]))
    keys, at = np.unique(slots >> 1, return_inverse=True)
    pos, neg = np.zeros(keys.size, np.int64), np.zeros(keys.size, np.int64)
    label = (slots & 1).astype(bool)
    pos[at[label]], neg[at[~label]] = counts[label], counts[~label]  # one slot per (key, label)
    values = ((np.uint32(bucket) << np.uint32(BUCKET_BITS)) | keys.astype(np.uint32)).view(np.float32)
    return ValueCounts(values, pos, neg)


def _add_counts(slots: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Counts of equal slots added up, by slot."""
    if slots.size == 0:
        return slots, counts
    order = np.argsort(slots, kind="stable")
    slots, counts = slots[order], counts[order]
    start = np.flatnonzero(np.concatenate([[True], slots[1:] != slots[:-1]]))
    return slots[start], np.add.reduceat(counts, start)


@dataclass(frozen=True)
class Offsets:
    """What a bucket's terms need from the rest of the split: its totals, the rows below
    the bucket, and the thresholds to count the confusion at."""

    n_pos: int
    n_neg: int
    pos_below: int
    neg_below: int
    thresholds: tuple[float, ...]
    min_recall: float


@dataclass
class BucketTerms:
    """One bucket's share of every split metric (exact integers where they can be)."""

    bucket: int
    auc2: int  # sum over positive rows of 2 * (negatives below) + (negatives tied)
    logloss: float
    prob_sum: float
    top: float  # the bucket's highest score
    # accuracy candidate: (correct rows, threshold, tp, fp) predicting positive at p >= threshold
    best: tuple[int, float, int, int]
    recall: tuple[float, int, int] | None  # highest threshold with recall >= floor: (t, tp, fp)
    at: list[tuple[int, int]]  # (tp, fp) rows of this bucket at or above each threshold
    roc: np.ndarray  # [k, 3]: (score, fp, tp) at some of the bucket's distinct scores


def bucket_terms(b: int, c: ValueCounts, o: Offsets) -> BucketTerms:
    pos_below = o.pos_below + np.cumsum(c.pos) - c.pos  # rows strictly below each score
    neg_below = o.neg_below + np.cumsum(c.neg) - c.neg
    tp, fp = o.n_pos - pos_below, o.n_neg - neg_below  # predicting positive at p >= score
    v = c.values.astype(np.float64)
    p = np.clip(v, _EPS, 1 - _EPS)
    correct = tp + (o.n_neg - fp)
    k = int(c.values.size - 1 - np.argmax(correct[::-1]))  # ties: the highest threshold
    reach = np.flatnonzero(tp / max(o.n_pos, 1) >= o.min_recall)
    recall = (float(v[reach[-1]]), int(tp[reach[-1]]), int(fp[reach[-1]])) if reach.size else None
    at = []
    for t in o.thresholds:
        above = v >= t
        at.append((int(c.pos[above].sum()), int(c.neg[above].sum())))
    step = max(1, -(-c.values.size // ROC_POINTS))
    picks = np.unique(np.append(np.arange(0, c.values.size, step), c.values.size - 1))
    return BucketTerms(
        bucket=b,
        auc2=int(np.sum(c.pos * (2 * neg_below + c.neg))),
        logloss=float(np.dot(c.pos, -np.log(p)) + np.dot(c.neg, -np.log(1 - p))),
        prob_sum=float(np.dot(c.pos + c.neg, v)),
        top=float(v[-1]),
        best=(int(correct[k]), float(v[k]), int(tp[k]), int(fp[k])),
        recall=recall,
        at=at,
        roc=np.stack([v[picks], fp[picks], tp[picks]], 1),
    )


def bucket_offsets(totals: np.ndarray, thresholds: tuple[float, ...], min_recall: float) -> list[Offsets]:
    """Each bucket's `Offsets`, from every bucket's (negative, positive) row totals [B, 2]."""
    below = np.cumsum(totals, 0) - totals
    n_neg, n_pos = (int(x) for x in totals.sum(0))
    return [Offsets(n_pos, n_neg, int(p), int(n), thresholds, min_recall) for n, p in below]


@dataclass
class SplitSummary:
    """Every split-level metric of one split, combined from its buckets' terms."""

    n_pos: int
    n_neg: int
    auc2: int
    logloss_sum: float
    prob_sum: float
    best: tuple[int, float, int, int]  # (correct, threshold, tp, fp)
    recall: tuple[float, int, int] | None  # (threshold, tp, fp) at the recall floor
    at: dict[float, tuple[int, int]] = field(default_factory=dict)  # threshold -> (tp, fp)
    roc: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))  # (score, fp, tp) descending

    @property
    def n(self) -> int:
        return self.n_pos + self.n_neg

    def auc(self) -> float:
        """Mann-Whitney AUC (a tie is half a win); NaN when only one class is present."""
        if self.n_pos == 0 or self.n_neg == 0:
            return float("nan")
        return self.auc2 / (2 * self.n_pos * self.n_neg)

    def logloss(self) -> float:
        return self.logloss_sum / self.n if self.n else float("nan")

    def best_accuracy_threshold(self) -> float:
        """The threshold that maximises accuracy (ties: the highest). Chosen on val only."""
        return self.best[1]

    def fpr_at_recall(self) -> tuple[float, float]:
        """(lowest FPR whose recall >= the floor, its threshold: the highest such score).

        FPR alone would be won by predicting nothing positive; the floor rules that out.
        (nan, nan) when a class is missing.
        """
        if self.recall is None or self.n_pos == 0 or self.n_neg == 0:
            return float("nan"), float("nan")
        return self.recall[2] / self.n_neg, self.recall[0]

    def selection_value(self, metric: str) -> float:
        """The val number that selects the model, larger is better: AUC or -FPR@recall.
        NaN (a one-class split) never counts as an improvement."""
        if metric == "auc":
            return self.auc()
        if metric == "fpr_at_recall":
            return -self.fpr_at_recall()[0]
        raise ValueError(f"unknown selection metric {metric!r}")

    def confusion(self, threshold: float) -> dict[str, float]:
        """Accuracy, FPR, precision and recall predicting positive at p >= threshold (one
        of the thresholds counted: asked for, or a chosen one)."""
        tp, fp = (0, 0) if np.isnan(threshold) else self.at[threshold]  # p >= NaN: never
        tn, fn = self.n_neg - fp, self.n_pos - tp
        return {
            "accuracy": (tp + tn) / max(self.n, 1),
            "fpr": fp / max(fp + tn, 1.0),
            "precision": tp / max(tp + fp, 1.0),
            "recall": tp / max(tp + fn, 1.0),
        }

    def report(self, threshold: float) -> dict[str, float]:
        """Every split-level metric at once, at a counted threshold."""
        base = float(np.clip(self.n_pos / max(self.n, 1), _EPS, 1 - _EPS))
        entropy = -(base * np.log(base) + (1 - base) * np.log(1 - base))
        rate = self.prob_sum / self.n if self.n else float("nan")
        return {
            "auc": self.auc(),
            "logloss": self.logloss(),
            "ne": float(self.logloss() / entropy),  # NE: < 1 beats predicting the base rate
            "calibration": rate / max(self.n_pos / max(self.n, 1), _EPS),  # 1.0 is calibrated
            "threshold": float(threshold),
            "n": self.n,
            **self.confusion(threshold),
        }

    def roc_curve(self) -> tuple[np.ndarray, np.ndarray]:
        """(FPR, TPR) from (0, 0) down the scores to (1, 1); at most ROC_POINTS a bucket."""
        fpr = np.concatenate([[0.0], self.roc[:, 1] / max(self.n_neg, 1)])
        tpr = np.concatenate([[0.0], self.roc[:, 2] / max(self.n_pos, 1)])
        return fpr, tpr


def combine(terms: Iterable[BucketTerms], totals: np.ndarray, thresholds: tuple[float, ...]) -> SplitSummary:
    """The split's summary from every non-empty bucket's terms, in key order (so the
    float sums are the same whatever rank computed which bucket)."""
    ordered = sorted(terms, key=lambda t: t.bucket)
    n_neg, n_pos = (int(x) for x in totals.sum(0))
    top = max((t.top for t in ordered), default=0.5)
    # predicting nothing positive: wins every tie, as the highest threshold (a float32, as
    # the scores are, so that comparing in either precision predicts nothing)
    best = (n_neg, float(np.nextafter(np.float32(top), np.float32(np.inf))) if ordered else 0.5, 0, 0)
    recall = None
    for t in reversed(ordered):  # descending scores
        if t.best[0] > best[0]:
            best = t.best
        if recall is None and t.recall is not None:
            recall = t.recall
    at = {th: (sum(t.at[i][0] for t in ordered), sum(t.at[i][1] for t in ordered))
          for i, th in enumerate(thresholds)}  # fmt: skip
    at[best[1]] = best[2:]
    if recall is not None:
        at[recall[0]] = recall[1:]
    roc = np.concatenate([t.roc for t in ordered])[::-1] if ordered else np.zeros((0, 3))
    return SplitSummary(
        n_pos=n_pos, n_neg=n_neg, auc2=sum(t.auc2 for t in ordered),
        logloss_sum=sum(t.logloss for t in ordered), prob_sum=sum(t.prob_sum for t in ordered),
        best=best, recall=recall, at=at, roc=roc,
    )  # fmt: skip


def summarize(
    labels: np.ndarray, probs: np.ndarray, thresholds: tuple[float, ...] = (), min_recall: float = 0.5
) -> SplitSummary:
    """The summary of arrays in memory, through the same buckets as a streamed split."""
    packed = pack_scores(labels, probs)
    buckets = bucket_of(packed)
    totals = np.zeros((N_SCORE_BUCKETS, 2), np.int64)
    np.add.at(totals, (buckets, (packed >> np.uint32(31)).astype(np.int64)), 1)
    offsets = bucket_offsets(totals, thresholds, min_recall)
    order = np.argsort(buckets, kind="stable")
    present, starts = np.unique(buckets[order], return_index=True)
    groups = np.split(packed[order], starts[1:])
    terms = [bucket_terms(int(b), count_bucket(int(b), [g]), offsets[b]) for b, g in zip(present, groups)]
    return combine(terms, totals, thresholds)


# ---------------------------------------------------------------- per-user ranking


RANKING_SUMS = ("gauc_num", "gauc_den", "gauc_users", "ndcg_sum", "recall_sum", "ranking_users")


def _group_means(values: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Mean of `values` over each run [start, start + size) of consecutive rows."""
    csum = np.concatenate([[0.0], np.cumsum(values, dtype=np.float64)])
    return (csum[starts + sizes] - csum[starts]) / sizes


def ranking_sums(users: np.ndarray, labels: np.ndarray, scores: np.ndarray, k: int = 10) -> np.ndarray:
    """Per-user ranking metrics of whole users' rows, as sums that add across groups of
    users (`RANKING_SUMS`; `ranking_means` turns them into the report, docs/evaluation.md).

    Each user's rows are ranked by score, descending; relevance = label. Tied scores have
    no order, so NDCG@K and Recall@K take their expectation over the orders of each tie
    group (a tied row gets the mean discount, and the mean in-top-K share, of the
    positions its group spans); gAUC's per-user AUC counts a tie as half a win.
    """
    u = np.asarray(users, dtype=np.int64)
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    order = np.lexsort((-s, u))  # by user, then score descending
    u, y, s = u[order], y[order], s[order]
    n = u.size
    if n == 0:
        return np.zeros(len(RANKING_SUMS))
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
    n_users = int(user[-1]) + 1
    n_rows = np.bincount(user, minlength=n_users).astype(np.float64)
    n_pos = np.bincount(user, weights=y, minlength=n_users)
    # gAUC: ascending midrank within the user of a tie group at descending positions [a, a + t)
    midrank = n_rows[user] - pos[tie_start][tie] - (tie_size[tie] - 1) / 2.0
    wins = np.bincount(user, weights=np.where(y, midrank, 0.0), minlength=n_users) - n_pos * (n_pos + 1) / 2
    n_neg = n_rows - n_pos
    both = (n_pos > 0) & (n_neg > 0)
    ranked = n_pos > 0
    dcg = np.bincount(user, weights=np.where(y, row_discount, 0.0), minlength=n_users)
    hits = np.bincount(user, weights=np.where(y, row_in_k, 0.0), minlength=n_users)
    ideal = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(k) + 2.0))])
    idcg = ideal[np.minimum(n_pos, k).astype(np.int64)]
    auc = wins[both] / (n_pos[both] * n_neg[both])
    return np.array([
        np.sum(auc * n_rows[both]), np.sum(n_rows[both]), both.sum(),
        np.sum(dcg[ranked] / idcg[ranked]), np.sum(hits[ranked] / n_pos[ranked]), ranked.sum(),
    ], dtype=np.float64)  # fmt: skip


def ranking_means(sums: np.ndarray, k: int = 10) -> dict[str, float]:
    """gauc: per-user AUC over users with both labels, weighted by their rows;
    gauc_users: how many such users; ndcg@K, recall@K: means over users with >= 1
    positive (binary gains, log2 discounts; recall = expected positives in the top K /
    the user's positives); ranking_users: how many such users. NaN where none qualifies."""
    gauc_num, gauc_den, gauc_users, ndcg, recall, ranked = (float(x) for x in sums)
    nan = float("nan")
    return {
        "gauc": gauc_num / gauc_den if gauc_users else nan,
        "gauc_users": int(gauc_users),
        f"ndcg@{k}": ndcg / ranked if ranked else nan,
        f"recall@{k}": recall / ranked if ranked else nan,
        "ranking_users": int(ranked),
    }


def ranking_report(users: np.ndarray, labels: np.ndarray, scores: np.ndarray, k: int = 10) -> dict[str, float]:
    """The per-user ranking metrics of arrays in memory (whole users)."""
    return ranking_means(ranking_sums(users, labels, scores, k), k)
