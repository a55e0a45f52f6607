"""A plain-Python, Flink-style SWING reference: dicts, sets and loops, no NumPy.

It is deliberately independent of `similarity.swing` (its own caps, its own hash) and
is used only by the tests and `benchmarks/swing_bench.py` as the ground truth and the
speed baseline; the job never calls it.  It follows DESIGN.md literally: for each
anchor, every unordered pair of its users, every item the two share.
"""

from __future__ import annotations

from collections.abc import Iterable

_M64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    x &= _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def reference_caps(
    pairs: Iterable[tuple[int, int]],
    min_user_items: int,
    max_user_items: int,
    max_users_per_item: int,
    seed: int,
) -> dict[int, set[int]]:
    """user -> items after the caps: drop users by distinct-item count, then sample
    big items' users by smallest splitmix64(splitmix64(splitmix64(seed) ^ item) ^ user)."""
    items_of: dict[int, set[int]] = {}
    for u, i in pairs:
        items_of.setdefault(u, set()).add(i)
    items_of = {u: s for u, s in items_of.items() if min_user_items <= len(s) <= max_user_items}
    users_of: dict[int, list[int]] = {}
    for u, s in items_of.items():
        for i in s:
            users_of.setdefault(i, []).append(u)
    s0 = _mix64(seed)
    out: dict[int, set[int]] = {}
    for i, us in users_of.items():
        if len(us) > max_users_per_item:
            us = sorted(us, key=lambda u: (_mix64(_mix64(s0 ^ i) ^ u), u))[:max_users_per_item]
        for u in us:
            out.setdefault(u, set()).add(i)
    return out


def reference_swing(
    items_of: dict[int, set[int]], alpha1: float, alpha2: float, beta: float
) -> dict[tuple[int, int], float]:
    """{(anchor, neighbor): score} over the graph `items_of` (member -> targets)."""
    users_of: dict[int, list[int]] = {}
    for u in sorted(items_of):
        for i in items_of[u]:
            users_of.setdefault(i, []).append(u)
    w = {u: (len(s) + alpha1) ** (-beta) for u, s in items_of.items()}
    sim: dict[tuple[int, int], float] = {}
    for i in sorted(users_of):
        us = users_of[i]
        for a in range(len(us)):
            u = us[a]
            for b in range(a + 1, len(us)):
                v = us[b]
                common = items_of[u] & items_of[v]
                term = w[u] * w[v] / (alpha2 + len(common))
                for j in common:
                    if j != i:
                        sim[(i, j)] = sim.get((i, j), 0.0) + term
    return sim


def transpose(items_of: dict[int, set[int]]) -> dict[int, set[int]]:
    """target -> members (user-user SWING is item-item SWING on this)."""
    out: dict[int, set[int]] = {}
    for u, s in items_of.items():
        for i in s:
            out.setdefault(i, set()).add(u)
    return out


def reference_top_k(sim: dict[tuple[int, int], float], k: int) -> list[tuple[int, int, float, int]]:
    """[(anchor, neighbor, float32-rounded score, rank)], sorted by (anchor, rank);
    higher float32 score first, ties by ascending neighbour."""
    import struct

    def f32(x: float) -> float:
        return struct.unpack("f", struct.pack("f", x))[0]

    by_anchor: dict[int, list[tuple[float, int]]] = {}
    for (a, j), s in sim.items():
        by_anchor.setdefault(a, []).append((f32(s), j))
    rows = []
    for a in sorted(by_anchor):
        best = sorted(by_anchor[a], key=lambda t: (-t[0], t[1]))[:k]
        rows += [(a, j, s, r) for r, (s, j) in enumerate(best)]
    return rows
