"""A slow, independent reference for the per-user ranking metrics (plain Python loops).

Definitions (docs/evaluation.md): within each user's scored rows of a split, ranked by
score (descending), relevance = label. Tied scores are in no particular order, so NDCG@K
and Recall@K are their expectations over every order of the tied rows; this reference
enumerates those orders one tie group at a time.
"""

from __future__ import annotations

import itertools
import math


def _group_expectation(rels: list[int], first: int, k: int) -> tuple[float, float]:
    """Mean (DCG, hits) contribution of tied rows `rels` at positions first.. over all their orders."""
    assert len(rels) <= 8, "tie group too large for the brute-force reference"
    dcg = hits = 0.0
    n = 0
    for perm in itertools.permutations(rels):
        n += 1
        for j, rel in enumerate(perm):
            pos = first + j
            if pos < k:
                dcg += rel / math.log2(pos + 2)
                hits += rel
    return dcg / n, hits / n


def ranking_reference(users: list[int], labels: list[int], scores: list[float], k: int) -> dict[str, float]:
    by_user: dict[int, list[tuple[float, int]]] = {}
    for u, y, s in zip(users, labels, scores):
        by_user.setdefault(int(u), []).append((float(s), int(y)))
    auc_sum = weight = 0.0
    ndcgs, recalls = [], []
    for rows in by_user.values():
        pos = [s for s, y in rows if y]
        neg = [s for s, y in rows if not y]
        if pos and neg:
            wins = 0.0
            for p in pos:
                for q in neg:
                    wins += 1.0 if p > q else 0.5 if p == q else 0.0
            auc_sum += len(rows) * wins / (len(pos) * len(neg))
            weight += len(rows)
        if not pos:
            continue
        ranked = sorted(rows, key=lambda r: -r[0])
        dcg = hits = 0.0
        i = 0
        while i < len(ranked):
            j = i
            while j < len(ranked) and ranked[j][0] == ranked[i][0]:
                j += 1
            d, h = _group_expectation([y for _, y in ranked[i:j]], i, k)
            dcg, hits = dcg + d, hits + h
            i = j
        idcg = sum(1.0 / math.log2(p + 2) for p in range(min(k, len(pos))))
        ndcgs.append(dcg / idcg)
        recalls.append(hits / len(pos))
    return {
        "gauc": auc_sum / weight if weight else float("nan"),
        "gauc_users": sum(1 for r in by_user.values() if 0 < sum(y for _, y in r) < len(r)),
        f"ndcg@{k}": sum(ndcgs) / len(ndcgs) if ndcgs else float("nan"),
        f"recall@{k}": sum(recalls) / len(recalls) if recalls else float("nan"),
        "ranking_users": len(ndcgs),
    }
