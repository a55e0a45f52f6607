"""SWING similarity as pure array math (DESIGN.md "SWING"): arrays in, arrays out.

Shapes: E = interactions (edges), A = anchors of one block, P = user pairs.

The graph is bipartite: "members" are the entities whose pairs vote (users for
item-item), "targets" the entities being scored (items for item-item).  User-user
similarity is the same computation with the two roles swapped.  For an anchor `a`
with members M_a, and a target `j != a`:

    w_m      = (|T_m| + alpha1) ** (-beta)                 T_m = targets of member m
    sim(a,j) = sum over unordered pairs {m, n} of distinct members of M_a ∩ M_j of
               w_m * w_n / (alpha2 + |T_m ∩ T_n|)

Every quantity is measured on ONE capped graph (`capped_edges`): users outside
[min_user_items, max_user_items] distinct items are dropped first, then items with
more than `max_users_per_item` of the remaining users keep a seeded sample.  |I_u|,
|U_i| and the overlaps are degrees and overlaps of that capped graph, for both
item-item and user-user (the caps are not re-applied in swapped roles).

The kernel (`swing_scores`) never materialises all overlapping member pairs.  It has
two backends that return the same bits: a compiled one (`similarity.swing_jit`, numba,
used when installed) that walks one anchor at a time with dense scratch arrays, and a
NumPy/SciPy one.  The NumPy one lists a block of anchors' (anchor, member, target)
entries, groups them by (anchor, target) with a linear counting sort, and walks the
pairs inside each group in bounded chunks: a first pass counts |T_m ∩ T_n| for every
pair of the anchor's members, a second adds w_m w_n / (alpha2 + overlap) to the group.
Either way each group's terms are added one after another in (m, n) order -- the
order of the plain-Python reference -- so an anchor's scores do not depend on which
other anchors share its block, chunk or rank.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

# Bytes the kernel holds per listed (anchor, member, target) entry and per member pair
# inside one chunk: conservative figures (tracemalloc peaks of the NumPy kernel on the
# benchmark graphs stayed below them; the compiled kernel's scratch needs ~40 bytes
# per entry); `block_plan` sizes blocks from them.
BYTES_PER_ENTRY = 64
BYTES_PER_PAIR = 48
# A member-pair overlap counter of n_a**2 int64 per anchor, its bincount copy and the
# float64 denominators.
BYTES_PER_KEY = 24
# Blocks and pair chunks are kept at or under this many bytes whatever the budget.
BLOCK_BYTES_CAP = float(1 << 26)

_M64 = (1 << 64) - 1


def _mix64_int(x: int) -> int:
    """splitmix64's finaliser on a Python int (for the scalar seed)."""
    x &= _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, elementwise on uint64 (wrapping multiplication)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def sample_keys(seed: int, item: np.ndarray, user: np.ndarray) -> np.ndarray:
    """A pseudo-random uint64 per (item, user) that depends only on (seed, item, user).

    An item over `max_users_per_item` keeps the users with the smallest keys, so its
    sample never depends on row order, partitioning or rank count.
    """
    s = np.uint64(_mix64_int(seed))
    with np.errstate(over="ignore"):
        h = _mix64(s ^ item.astype(np.uint64))
        return _mix64(h ^ user.astype(np.uint64))


def distinct_codes(user: np.ndarray, item: np.ndarray, n_items: int) -> np.ndarray:
    """Sorted distinct user * n_items + item (int64); a sort is faster than np.unique's hash."""
    code = np.sort(user.astype(np.int64) * n_items + item.astype(np.int64))
    if len(code) == 0:
        return code
    return code[np.concatenate([[True], code[1:] != code[:-1]])]


def capped_edges(
    user: np.ndarray,
    item: np.ndarray,
    n_users: int,
    n_items: int,
    min_user_items: int,
    max_user_items: int,
    max_users_per_item: int,
    seed: int,
    code: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (user, item) positives after SWING's caps, sorted by (user, item).

    Args:
        user, item: int64 dense ids, shape (E,); duplicates allowed.
        n_users, n_items: id ranges.
        min_user_items, max_user_items: users outside this range of distinct items are
            dropped whole (not truncated).
        max_users_per_item: an item with more remaining users keeps the ones with the
            smallest `sample_keys(seed, item, user)`.
        seed: sample seed.
        code: `distinct_codes(user, item, n_items)` when the caller already has them
            (the sort is the costliest step); `user` and `item` are then not read.

    Returns:
        (user, item): int64, shape (E',), sorted by user then item.
    """
    if code is None:
        code = distinct_codes(user, item, n_items)
    u, i = code // n_items, code % n_items
    deg = np.bincount(u, minlength=n_users)
    keep = (deg[u] >= min_user_items) & (deg[u] <= max_user_items)
    u, i = u[keep], i[keep]
    users_per_item = np.bincount(i, minlength=n_items)
    if len(i) and users_per_item.max() > max_users_per_item:
        big = users_per_item[i] > max_users_per_item
        bu, bi = u[big], i[big]
        # (item, key, user) order: the entries arrive sorted by user, so a stable sort
        # by key and then a stable sort by item is that lexsort, in 2/3 of its time.
        order = np.argsort(sample_keys(seed, bi, bu), kind="stable")
        order = order[np.argsort(bi[order], kind="stable")]
        bi_sorted = bi[order]
        starts = np.searchsorted(bi_sorted, bi_sorted, side="left")
        rank_in_item = np.arange(len(order)) - starts
        chosen = np.zeros(len(order), dtype=bool)
        chosen[order] = rank_in_item < max_users_per_item
        keep = np.ones(len(u), dtype=bool)
        keep[np.flatnonzero(big)] = chosen
        u, i = u[keep], i[keep]
    return u, i


def to_csr(
    rows: np.ndarray, cols: np.ndarray, n_rows: int, n_cols: int
) -> tuple[np.ndarray, np.ndarray]:
    """(indptr int64 (n_rows+1,), indices `index_dtype(n_cols)`) of distinct pairs,
    columns sorted per row.

    One sort of row * n_cols + col (NumPy's SIMD sort) instead of a lexsort.
    """
    key = np.sort(rows.astype(np.int64) * n_cols + cols.astype(np.int64))
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(key // n_cols, minlength=n_rows), out=indptr[1:])
    return indptr, (key % n_cols).astype(index_dtype(n_cols))


def index_dtype(n: int) -> type:
    """int32 for ids below 2**31 (half the bytes the kernel walks through), else int64."""
    return np.int32 if n < (1 << 31) else np.int64


def csr_of_sorted(
    rows: np.ndarray, cols: np.ndarray, n_rows: int, n_cols: int
) -> tuple[np.ndarray, np.ndarray]:
    """`to_csr` of distinct pairs already sorted by (row, col): no sort needed."""
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_rows), out=indptr[1:])
    return indptr, cols.astype(index_dtype(n_cols))


def member_weights(degree: np.ndarray, alpha1: float, beta: float) -> np.ndarray:
    """w_m = (|T_m| + alpha1) ** -beta, float64, shape like `degree`.

    A member without targets (dropped by the caps) gets inf when alpha1 == 0; it is in
    no anchor's member list, so the value is never read.
    """
    with np.errstate(divide="ignore"):
        return (degree.astype(np.float64) + alpha1) ** (-beta)


def work_estimate(
    anchor_ptr: np.ndarray, anchor_members: np.ndarray, member_ptr: np.ndarray
) -> np.ndarray:
    """Estimated kernel work per anchor (float64, shape (n_anchors,)).

    |M_a|**2 (the member pairs; the issue's sum of |U_i|**2) plus the entries the kernel
    lists, the sum of |T_m| over m in M_a.  The second term is what dominates user-user,
    where an anchor's few items can each have up to `max_users_per_item` users.
    """
    n = np.diff(anchor_ptr).astype(np.float64)
    per_slot = np.diff(member_ptr)[anchor_members].astype(np.float64)
    cum = np.concatenate([[0.0], np.cumsum(per_slot)])
    return n * n + (cum[anchor_ptr[1:]] - cum[anchor_ptr[:-1]])


def split_by_work(work: np.ndarray, parts: int) -> np.ndarray:
    """Bounds (parts+1,) of `parts` contiguous anchor ranges of about equal total work."""
    total = float(work.sum())
    if total == 0.0:
        return np.linspace(0, len(work), parts + 1).astype(np.int64)
    cum = np.cumsum(work)
    targets = total * np.arange(1, parts) / parts
    inner = np.searchsorted(cum, targets, side="left") + 1
    bounds = np.concatenate([[0], np.minimum(inner, len(work)), [len(work)]])
    return np.maximum.accumulate(bounds).astype(np.int64)


def block_plan(
    anchor_ptr: np.ndarray,
    member_ptr: np.ndarray,
    anchor_members: np.ndarray,
    lo: int,
    hi: int,
    budget_bytes: float,
) -> list[tuple[int, int]]:
    """Split anchors [lo, hi) into consecutive blocks whose entries and overlap
    counters fit `budget_bytes` (a single anchor over budget gets a block of its own;
    its pairs are still chunked).
    """
    member_deg = np.diff(member_ptr)
    n = np.diff(anchor_ptr[lo : hi + 1])
    per_member = member_deg[anchor_members[anchor_ptr[lo] : anchor_ptr[hi]]]
    cum = np.concatenate([[0], np.cumsum(per_member)])
    entries = (
        cum[anchor_ptr[lo + 1 : hi + 1] - anchor_ptr[lo]] - cum[anchor_ptr[lo:hi] - anchor_ptr[lo]]
    )
    cost = entries * float(BYTES_PER_ENTRY) + (n.astype(np.float64) ** 2) * BYTES_PER_KEY
    blocks: list[tuple[int, int]] = []
    start, acc = lo, 0.0
    for k, c in enumerate(cost.tolist()):
        if acc + c > budget_bytes and start < lo + k:
            blocks.append((start, lo + k))
            start, acc = lo + k, 0.0
        acc += c
    if start < hi:
        blocks.append((start, hi))
    return blocks


_TRIU: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _triu(c: int) -> tuple[np.ndarray, np.ndarray]:
    """(p, q) with p < q < c in row-major order; small sizes are cached."""
    hit = _TRIU.get(c)
    if hit is not None:
        return hit
    p, q = np.triu_indices(c, 1)
    out = (p.astype(np.int64), q.astype(np.int64))
    if c <= 128:
        _TRIU[c] = out
    return out


def _chunks(g_size: np.ndarray, max_pairs: int) -> list[tuple[int, int]]:
    """Consecutive group ranges of at most about `max_pairs` pairs; never split a group."""
    cum = np.cumsum(g_size * (g_size - 1) // 2)
    out, g0 = [], 0
    while g0 < len(g_size):
        base = int(cum[g0 - 1]) if g0 else 0
        g1 = max(int(np.searchsorted(cum, base + max_pairs, side="right")), g0 + 1)
        out.append((g0, g1))
        g0 = g1
    return out


def _chunk_pairs(
    g_start: np.ndarray, g_size: np.ndarray, g0: int, g1: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every member pair of groups [g0, g1): entry positions (first, second) and the
    group (local to g0), shape (P,) each.  Each group's pairs are contiguous and in
    row-major (p, q) order, which fixes the order its terms are summed in.
    """
    sizes = g_size[g0:g1]
    total = int((sizes * (sizes - 1) // 2).sum())
    first = np.empty(total, dtype=np.int64)
    second = np.empty(total, dtype=np.int64)
    local = np.empty(total, dtype=np.int64)
    order = np.argsort(sizes, kind="stable")
    pos = 0
    for run in np.split(order, np.flatnonzero(np.diff(sizes[order])) + 1):
        p, q = _triu(int(sizes[run[0]]))
        n = len(run) * len(p)
        starts = g_start[g0 + run][:, None]
        np.add(starts, p, out=first[pos : pos + n].reshape(len(run), len(p)))
        np.add(starts, q, out=second[pos : pos + n].reshape(len(run), len(p)))
        local[pos : pos + n].reshape(len(run), len(p))[:] = run[:, None]
        pos += n
    return first, second, local


def kernel_backend(requested: str = "auto") -> str:
    """ "numba" when requested or available (auto), else "numpy".

    Raises:
        ImportError: "numba" was requested and numba is not installed.
    """
    if requested == "numpy":
        return "numpy"
    try:
        import similarity.swing_jit  # noqa: F401
    except ImportError:
        if requested == "numba":
            raise
        return "numpy"
    return "numba"


def swing_scores(
    anchor_ptr: np.ndarray,
    anchor_members: np.ndarray,
    member_ptr: np.ndarray,
    member_targets: np.ndarray,
    weight: np.ndarray,
    alpha2: float,
    n_targets: int,
    lo: int,
    hi: int,
    max_pairs: int = 1 << 22,
    backend: str = "auto",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """SWING scores of anchors [lo, hi) against every target they share >= 2 members with.

    Args:
        anchor_ptr, anchor_members: CSR anchor -> members, members sorted per anchor.
        member_ptr, member_targets: CSR member -> targets (the same capped graph),
            targets in [0, n_targets).
        weight: float64 (n_members,), `member_weights` of the members.
        alpha2: overlap smoothing.
        n_targets: number of target ids.
        lo, hi: the anchor range of this block.
        max_pairs: NumPy kernel only: member pairs held at once (memory bound).
        backend: "auto" (numba when installed), "numba" or "numpy".  Both add every
            score's terms in the same order, so they return the same bits.

    Returns:
        anchor int64 (N,), neighbor int64 (N,), score float64 (N,): rows grouped by
        anchor in ascending order (neighbours within an anchor in no set order; the
        NumPy backend happens to sort them), and the number of terms added (the
        block's contributions W).
    """
    if kernel_backend(backend) == "numpy":
        return _swing_scores_numpy(
            anchor_ptr, anchor_members, member_ptr, member_targets, weight,
            alpha2, n_targets, lo, hi, max_pairs,
        )  # fmt: skip
    from similarity.swing_jit import swing_block

    n_a = np.diff(anchor_ptr[lo : hi + 1])
    slots = anchor_members[anchor_ptr[lo] : anchor_ptr[hi]]
    cum = np.concatenate([[0], np.cumsum(member_ptr[slots + 1] - member_ptr[slots])])
    per_anchor = (
        cum[anchor_ptr[lo + 1 : hi + 1] - anchor_ptr[lo]] - cum[anchor_ptr[lo:hi] - anchor_ptr[lo]]
    )
    max_ent = int(per_anchor.max()) if len(per_anchor) else 0
    max_n = int(n_a.max()) if len(n_a) else 0
    n_out_max = int(cum[-1]) // 2 + 1  # a scored group holds >= 2 entries
    out_a = _scratch("out_a", n_out_max, np.int64)
    out_n = _scratch("out_n", n_out_max, np.int64)
    out_s = _scratch("out_s", n_out_max, np.float64)
    # Overlaps never exceed the largest member degree: uint16 when that fits, so the
    # triangle of a 1000-member anchor is 1 MB and stays in cache.
    max_degree = int(np.diff(member_ptr).max()) if len(member_ptr) > 1 else 0
    ov_type = np.uint16 if max_degree < (1 << 16) - 1 else np.int32
    id_type = np.int32 if n_targets < (1 << 31) else np.int64
    n_out, w = swing_block(
        anchor_ptr, anchor_members, member_ptr, member_targets, weight, float(alpha2),
        int(lo), int(hi),
        _scratch("cnt", n_targets, np.int32, zeroed=True),
        _scratch("start", n_targets, np.int32 if max_ent < (1 << 31) - 2 else np.int64),
        _scratch("overlap", max_n * (max_n - 1) // 2, ov_type, zeroed=True),
        _scratch("touched", max_ent, id_type),
        _scratch("groups", max_ent, id_type),
        _scratch("bucket", max_ent + 1, np.int32, exact=True),
        _scratch("wx", max_n, np.float64),
        out_a, out_n, out_s,
    )  # fmt: skip
    return out_a[:n_out].copy(), out_n[:n_out].copy(), out_s[:n_out].copy(), int(w)


# Scratch arrays of the compiled kernel, kept between blocks of this process.  Fresh
# pages cost ~1 us each on the VMs we run on, more than the math of a small block.
# Not thread-safe (the jobs are one thread per rank).
_SCRATCH: dict[str, np.ndarray] = {}


def _scratch(
    name: str, size: int, dtype: type, zeroed: bool = False, exact: bool = False
) -> np.ndarray:
    """A reusable array of at least `size` (exactly `size` when `exact`).

    `zeroed` arrays are created zero and must be handed back zero (the kernel resets
    what it touches).
    """
    name = f"{name}:{np.dtype(dtype).name}"
    have = _SCRATCH.get(name)
    if have is None or len(have) < size:
        grown = max(size, int(1.5 * len(have)) if have is not None else size, 16)
        have = np.zeros(grown, dtype=dtype) if zeroed else np.empty(grown, dtype=dtype)
        _SCRATCH[name] = have
    return have[:size] if exact else have


def _swing_scores_numpy(
    anchor_ptr: np.ndarray,
    anchor_members: np.ndarray,
    member_ptr: np.ndarray,
    member_targets: np.ndarray,
    weight: np.ndarray,
    alpha2: float,
    n_targets: int,
    lo: int,
    hi: int,
    max_pairs: int = 1 << 22,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """`swing_scores` in NumPy/SciPy: list entries, group them, walk pairs in chunks."""
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64), 0)
    members = anchor_members[int(anchor_ptr[lo]) : anchor_ptr[hi]]
    if len(members) == 0:
        return empty
    row_anchor, row_x, row_key, n_keys = _anchor_rows(anchor_ptr, lo, hi)
    rows, g_size, g_target, g_anchor = _target_groups(
        members, row_anchor, member_ptr, member_targets, n_targets
    )
    if len(g_size) == 0:
        return empty
    ent_key, ent_x, ent_w = row_key[rows], row_x[rows], weight[members[rows]]
    del rows  # the pairs below are the peak: hold only what they need
    score = _group_scores(ent_key, ent_x, ent_w, g_size, n_keys, max_pairs, alpha2=alpha2)
    contributions = int((g_size * (g_size - 1) // 2).sum())
    order = np.lexsort((g_target, g_anchor))
    return g_anchor[order], g_target[order], score[order], contributions


def _anchor_rows(
    anchor_ptr: np.ndarray, lo: int, hi: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """One row per (anchor, member) of anchors [lo, hi): its anchor, x = the member's
    position in the anchor's list, and the base of its overlap counters; and how many
    counters there are."""
    n_a = np.diff(anchor_ptr[lo : hi + 1])
    slot0 = int(anchor_ptr[lo])
    n_rows = int(anchor_ptr[hi]) - slot0
    row_anchor = np.repeat(np.arange(lo, hi, dtype=np.int64), n_a)
    row_x = np.arange(n_rows, dtype=np.int64) - np.repeat(anchor_ptr[lo:hi] - slot0, n_a)
    # Overlap counters: anchor a's pair (x, y), x < y, lives at key_base[a] + x * n_a + y.
    key_base = np.concatenate([[0], np.cumsum(n_a * n_a)[:-1]]).astype(np.int64)
    row_key = np.repeat(key_base, n_a) + row_x * np.repeat(n_a, n_a)
    return row_anchor, row_x, row_key, int((n_a * n_a).sum())


def _target_groups(
    members: np.ndarray,
    row_anchor: np.ndarray,
    member_ptr: np.ndarray,
    member_targets: np.ndarray,
    n_targets: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The (anchor, target) groups of >= 2 members, the anchor's own target left out.

    Returns (rows, size, target, anchor): the groups' rows (entries of a group are
    contiguous, its members in order) and per group its size, target and anchor.
    """
    # Entries (row, target): each row's member's targets.  A linear counting sort
    # (CSR -> CSC) puts them target-major with rows ascending inside a target, so each
    # (anchor, target) group is one run with its members in order.
    n_rows = len(members)
    deg = member_ptr[members + 1] - member_ptr[members]
    row_ptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(deg, out=row_ptr[1:])
    n_ent = int(row_ptr[-1])
    ent_tgt = member_targets[
        np.arange(n_ent, dtype=np.int64) + np.repeat(member_ptr[members] - row_ptr[:-1], deg)
    ]
    csc = sp.csr_array(
        (np.ones(n_ent, dtype=np.int8), ent_tgt, row_ptr), shape=(n_rows, n_targets)
    ).tocsc()
    del ent_tgt
    rows = csc.indices.astype(np.int64, copy=False)
    col_ptr = csc.indptr.astype(np.int64, copy=False)
    del csc
    # same[e]: entry e continues the group of entry e-1 (same anchor, same target).
    # Groups of >= 2 members are the runs of `same`, so singleton groups -- most of
    # them in user-user -- never cost more than these boolean passes.
    anc = row_anchor[rows]
    same = np.zeros(n_ent + 1, dtype=bool)
    np.equal(anc[1:], anc[:-1], out=same[1:n_ent])
    del anc
    col_starts = col_ptr[1:-1]
    same[col_starts[col_starts < n_ent]] = False
    run_head = np.flatnonzero(same[1:] & ~same[:-1]) + 1  # second member of a group
    run_tail = np.flatnonzero(same[:-1] & ~same[1:])  # last member of a group
    del same
    g_start = run_head - 1
    g_size = run_tail - g_start + 1
    g_target = np.searchsorted(col_ptr, g_start, side="right") - 1
    g_anchor = row_anchor[rows[g_start]]
    # An anchor's own target is not its neighbour.
    keep = g_target != g_anchor
    g_start, g_size = g_start[keep], g_size[keep]
    # Compact the entries to the kept groups before the per-entry gathers.
    rows = rows[np.repeat(g_start, g_size) + _ranks_in_runs(g_size)]
    return rows, g_size, g_target[keep], g_anchor[keep]


def _group_scores(
    ent_key: np.ndarray,
    ent_x: np.ndarray,
    ent_w: np.ndarray,
    g_size: np.ndarray,
    n_keys: int,
    max_pairs: int,
    *,
    alpha2: float,
) -> np.ndarray:
    """Each group's score, sum of w_m w_n / (alpha2 + overlap + 1) over its member pairs,
    from its entries' overlap-counter bases, positions and weights (groups contiguous);
    pairs are walked in chunks of about `max_pairs`."""
    g_start = np.concatenate([[0], np.cumsum(g_size)[:-1]]).astype(np.int64)
    chunks = _chunks(g_size, max_pairs)

    def pairs(g0: int, g1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(first, second, overlap key, local group) of the chunk's pairs."""
        first, second, local = _chunk_pairs(g_start, g_size, g0, g1)
        key = ent_key[first]
        key += ent_x[second]
        return first, second, key, local

    # Pass 1: overlaps |T_m ∩ T_n| of the anchor's member pairs, less the anchor itself.
    overlap = np.zeros(n_keys, dtype=np.int64)
    cached = None
    for g0, g1 in chunks:
        chunk = pairs(g0, g1)
        overlap += np.bincount(chunk[2], minlength=n_keys)
        if len(chunks) == 1:
            cached = chunk
    overlap += 1  # the anchor itself is in every pair's overlap
    denom = overlap.astype(np.float64)
    denom += alpha2  # alpha2 + |T_m ∩ T_n|, added in the reference's order
    del overlap
    # Pass 2: each pair adds w_m w_n / (alpha2 + overlap) to its (anchor, target) group.
    score = np.empty(len(g_size), dtype=np.float64)
    for g0, g1 in chunks:
        first, second, key, local = cached if cached is not None else pairs(g0, g1)
        term = ent_w[first]
        term *= ent_w[second]
        term /= denom[key]
        score[g0:g1] = np.bincount(local, weights=term, minlength=g1 - g0)
    return score


def _ranks_in_runs(sizes: np.ndarray) -> np.ndarray:
    """[0..s0), [0..s1), ... concatenated (int64)."""
    starts = np.cumsum(sizes) - sizes
    return np.arange(int(sizes.sum()), dtype=np.int64) - np.repeat(starts, sizes)


def top_k_neighbors(
    anchor: np.ndarray, neighbor: np.ndarray, score: np.ndarray, k: int, backend: str = "auto"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The k best neighbours per anchor, sorted by (anchor, rank).

    Ranking uses the float32 score as stored, so the table is self-consistent: higher
    score first, equal (float32) scores by ascending neighbour id.

    Args:
        anchor, neighbor, score: rows grouped by anchor in ascending order (as
            `swing_scores` returns them); scores > 0.
        k: neighbours kept per anchor.
        backend: as in `swing_scores`; both give the same rows.

    Returns:
        anchor int64, neighbor int64, score float32, rank int16 (0-based), shape (N',).
    """
    s32 = score.astype(np.float32)
    compiled = len(neighbor) == 0 or int(neighbor.max()) < (1 << 32)
    if compiled and kernel_backend(backend) == "numba":
        from similarity.swing_jit import top_k_grouped

        sel, rank = top_k_grouped(anchor, neighbor, s32, k)
    else:
        order = np.lexsort((neighbor, -s32, anchor))
        a = anchor[order]
        full_rank = np.arange(len(a)) - np.searchsorted(a, a, side="left")
        keep = full_rank < k
        sel, rank = order[keep], full_rank[keep].astype(np.int16)
    return (
        anchor[sel].astype(np.int64),
        neighbor[sel].astype(np.int64),
        s32[sel],
        rank.astype(np.int16),
    )
