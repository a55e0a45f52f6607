"""The compiled (numba) SWING kernel: the same math, order of additions and output as
`similarity.swing._swing_scores_numpy`, about 5-10x faster on 2 cores.

It walks one anchor at a time with dense scratch arrays instead of listing every
(anchor, member, target) entry and pair in NumPy temporaries:

1. count each target's members inside the anchor (`cnt`), skipping the anchor itself;
2. bucket the members of every target with >= 2 of them (members stay in order);
3. count the overlaps of the anchor's member pairs in a packed triangle, one per shared
   target (the anchor's own target is the "+1" added later);
4. sum w_p * w_q / (alpha2 + overlap + 1) over each bucket's pairs in row-major
   (p, q) order -- the reference's order, so the floats are the same bits.

Memory per call: O(n_targets) counters, O(max |M_a|**2) overlaps (the caps bound
|M_a| by max_users_per_item / max_user_items), and O(entries of the block) for the
buckets and the output.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True, inline="always")
def _tri_row(x: int, n: int) -> int:
    """Offset of row x of the strict upper triangle of an n x n matrix, packed row by
    row, minus x + 1: entry (x, y), y > x, lives at _tri_row(x, n) + y."""
    return x * n - x * (x + 1) // 2 - x - 1


@numba.njit(cache=True, nogil=True)
def swing_block(
    anchor_ptr: np.ndarray,
    anchor_members: np.ndarray,
    member_ptr: np.ndarray,
    member_targets: np.ndarray,
    weight: np.ndarray,
    alpha2: float,
    lo: int,
    hi: int,
    cnt: np.ndarray,
    start: np.ndarray,
    overlap: np.ndarray,
    touched: np.ndarray,
    groups: np.ndarray,
    bucket: np.ndarray,
    wx: np.ndarray,
    out_a: np.ndarray,
    out_n: np.ndarray,
    out_s: np.ndarray,
) -> tuple[int, int]:
    """Scores of anchors [lo, hi) into out_a / out_n / out_s.

    Scratch (reused across calls; fresh pages cost more than the math on small blocks):
    cnt int32 (n_targets,) all zero, start int32/int64 (n_targets,), overlap
    (>= max |M_a| * (max |M_a| - 1) / 2,) all zero, the strict upper triangle of the
    member-pair overlaps packed row by row, in any integer type that holds the largest
    member degree (uint16 keeps it in cache) -- cnt and overlap are left zero again --
    touched, groups (int32 when the target ids fit, else int64) with room for the largest
    anchor's entries, bucket int32 with room for them plus one, and wx float64 with
    room for the largest anchor's members (their weights: kept per anchor rather than
    per bucket slot, so the buckets take a third of the memory).  out_* need room for half the block's entries.

    Returns (n_out, contributions W); out rows [0, n_out) are grouped by anchor in
    ascending order.
    """
    n_out = 0
    contributions = 0
    for a in range(lo, hi):
        members = anchor_members[anchor_ptr[a] : anchor_ptr[a + 1]]
        n = len(members)
        n_touched = _count_targets(a, members, member_ptr, member_targets, cnt, touched)
        n_groups = _shared_targets(touched, n_touched, cnt, groups)
        _fill_buckets(
            a, members, member_ptr, member_targets, weight, touched, n_touched, groups,
            n_groups, cnt, start, bucket, wx,
        )  # fmt: skip
        contributions += _count_overlaps(groups, n_groups, cnt, start, bucket, overlap, n)
        for k in range(n_groups):
            j = groups[k]
            out_a[n_out] = a
            out_n[n_out] = j
            out_s[n_out] = _target_score(start[j] - cnt[j], cnt[j], bucket, wx, overlap, n, alpha2)
            n_out += 1
        # reset the scratch for the next anchor
        for k in range(n_touched):
            cnt[touched[k]] = 0
        overlap[: n * (n - 1) // 2] = 0
    return n_out, contributions


@numba.njit(cache=True, nogil=True)
def _count_targets(
    a: int,
    members: np.ndarray,
    member_ptr: np.ndarray,
    member_targets: np.ndarray,
    cnt: np.ndarray,
    touched: np.ndarray,
) -> int:
    """Step 1: each target's members inside anchor a (`cnt`), skipping a itself; the
    targets in first-touch order go to `touched`. Returns how many."""
    n_touched = 0
    for x in range(len(members)):
        m = members[x]
        for t in range(member_ptr[m], member_ptr[m + 1]):
            j = member_targets[t]
            if j == a:
                continue
            # branch-free: the hit pattern is random, mispredictions cost more
            touched[n_touched] = j
            n_touched += cnt[j] == 0
            cnt[j] += 1
    return n_touched


@numba.njit(cache=True, nogil=True)
def _shared_targets(
    touched: np.ndarray, n_touched: int, cnt: np.ndarray, groups: np.ndarray
) -> int:
    """Step 2a: the targets with >= 2 members into `groups`, in first-touch order (top-K
    sorts later; sorting here would cost more than the rest of the kernel). Returns how many."""
    n_groups = 0
    for k in range(n_touched):
        j = touched[k]
        if cnt[j] >= 2:
            groups[n_groups] = j
            n_groups += 1
    return n_groups


@numba.njit(cache=True, nogil=True)
def _fill_buckets(
    a: int,
    members: np.ndarray,
    member_ptr: np.ndarray,
    member_targets: np.ndarray,
    weight: np.ndarray,
    touched: np.ndarray,
    n_touched: int,
    groups: np.ndarray,
    n_groups: int,
    cnt: np.ndarray,
    start: np.ndarray,
    bucket: np.ndarray,
    wx: np.ndarray,
) -> None:
    """Step 2b: the members (by position x) of every shared target into its bucket,
    members in order, and their weights into wx; afterwards start[j] points one past
    target j's bucket."""
    # Singletons (and the anchor's own target) write to a dummy slot past the end,
    # again to keep the loop free of unpredictable branches.
    dummy = len(bucket) - 1
    for k in range(n_touched):
        start[touched[k]] = dummy
    start[a] = dummy
    pos = 0
    for k in range(n_groups):
        j = groups[k]
        start[j] = pos
        pos += cnt[j]
    for x in range(len(members)):
        m = members[x]
        wx[x] = weight[m]
        for t in range(member_ptr[m], member_ptr[m + 1]):
            j = member_targets[t]
            slot = start[j]
            bucket[slot] = x
            start[j] = slot + (slot != dummy)


@numba.njit(cache=True, nogil=True)
def _count_overlaps(
    groups: np.ndarray,
    n_groups: int,
    cnt: np.ndarray,
    start: np.ndarray,
    bucket: np.ndarray,
    overlap: np.ndarray,
    n: int,
) -> int:
    """Step 3: the shared targets of every member pair of the anchor, in the packed
    triangle `overlap`. Returns the pair contributions W of the anchor."""
    contributions = 0
    for k in range(n_groups):
        j = groups[k]
        c = cnt[j]
        b0 = start[j] - c
        contributions += c * (c - 1) // 2
        for p in range(b0, b0 + c):
            row = _tri_row(bucket[p], n)
            for q in range(p + 1, b0 + c):
                overlap[row + bucket[q]] += 1
    return contributions


@numba.njit(cache=True, nogil=True)
def _target_score(
    b0: int, c: int, bucket: np.ndarray, wx: np.ndarray, overlap: np.ndarray, n: int, alpha2: float
) -> float:
    """Step 4: one target's score, sum of w_p * w_q / (alpha2 + overlap + 1) over the
    member pairs of its bucket bucket[b0:b0 + c], in row-major (p, q) order."""
    total = 0.0
    for p in range(b0, b0 + c):
        xp = bucket[p]
        wp = wx[xp]
        row = _tri_row(xp, n)
        for q in range(p + 1, b0 + c):
            xq = bucket[q]
            denom = float(overlap[row + xq] + 1) + alpha2
            total += wp * wx[xq] / denom
    return total


@numba.njit(cache=True, nogil=True)
def top_k_grouped(
    anchor: np.ndarray, neighbor: np.ndarray, score32: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Row order of the top-k per anchor of rows grouped by anchor (ascending).

    Ranks by float32 score descending, then ascending neighbour, via one uint64 key per
    row: (flipped score bits) << 32 | neighbor.  Scores are > 0, so their IEEE bits
    order like the values; neighbours must be < 2**32 (dense ids).

    Returns (rows, rank): the selected row indices in (anchor, rank) order, rank int16.
    """
    n = len(anchor)
    key = np.empty(n, dtype=np.uint64)
    bits = score32.view(np.uint32)
    for r in range(n):
        flipped = np.uint64(0xFFFFFFFF) - np.uint64(bits[r])
        key[r] = (flipped << np.uint64(32)) | np.uint64(neighbor[r])
    rows = np.empty(n, dtype=np.int64)
    rank = np.empty(n, dtype=np.int16)
    n_out = 0
    s = 0
    while s < n:
        e = s + 1
        while e < n and anchor[e] == anchor[s]:
            e += 1
        seg = key[s:e]
        order = np.argsort(seg, kind="mergesort") if e - s <= k else _top_order(seg, k)
        for r in range(min(k, e - s)):
            rows[n_out] = s + order[r]
            rank[n_out] = r
            n_out += 1
        s = e
    return rows[:n_out], rank[:n_out]


@numba.njit(cache=True, nogil=True)
def _top_order(seg: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k smallest keys of `seg`, in ascending key order (keys unique)."""
    kth = np.partition(seg, k - 1)[k - 1]
    pos = np.empty(k, dtype=np.int64)
    m = 0
    for i in range(len(seg)):
        if seg[i] <= kth:
            pos[m] = i
            m += 1
    return pos[np.argsort(seg[pos], kind="mergesort")]
