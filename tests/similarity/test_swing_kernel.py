"""SWING math (similarity.swing) against the plain-Python reference and a hand-computed case."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from similarity import swing
from similarity.reference import reference_caps, reference_swing, reference_top_k, transpose

try:
    import numba  # noqa: F401

    BACKENDS = ["numpy", "numba"]
except ImportError:  # the NumPy kernel still runs; numba is in requirements.txt
    BACKENDS = ["numpy"]
backends = pytest.mark.parametrize("backend", BACKENDS)


def kernel_scores(
    items_of: dict[int, set[int]],
    n_members: int,
    n_targets: int,
    alpha1: float,
    alpha2: float,
    beta: float,
    cuts: list[int] | None = None,
    max_pairs: int = 1 << 20,
    backend: str = "numpy",
) -> tuple[dict[tuple[int, int], float], int]:
    """{(anchor, neighbor): score} from swing_scores, with anchors split at `cuts`."""
    mem = np.array([m for m, s in items_of.items() for _ in s], dtype=np.int64)
    tgt = np.array([t for s in items_of.values() for t in s], dtype=np.int64)
    m_ptr, m_idx = swing.to_csr(mem, tgt, n_members, n_targets)
    a_ptr, a_idx = swing.to_csr(tgt, mem, n_targets, n_members)
    weight = swing.member_weights(np.diff(m_ptr), alpha1, beta)
    bounds = sorted({0, n_targets, *(c for c in cuts or [] if c < n_targets)})
    out: dict[tuple[int, int], float] = {}
    total = 0
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        a, n, s, w = swing.swing_scores(
            a_ptr, a_idx, m_ptr, m_idx, weight, alpha2, n_targets, lo, hi, max_pairs, backend
        )
        assert np.all(np.diff(a) >= 0)
        out.update({(x, y): v for x, y, v in zip(a.tolist(), n.tolist(), s.tolist())})
        total += w
    return out, total


def as_dict(user: np.ndarray, item: np.ndarray) -> dict[int, set[int]]:
    out: dict[int, set[int]] = {}
    for u, i in zip(user.tolist(), item.tolist()):
        out.setdefault(u, set()).add(i)
    return out


@backends
def test_hand_computed(backend: str) -> None:
    # Users 0,1,2 all bought items 0 and 1; user 2 also bought item 2; user 3 bought 1, 2.
    # alpha1 = 0, beta = 1 -> w_u = 1/|I_u|: w0 = w1 = 1/2, w2 = 1/3, w3 = 1/2.
    # |I_0 ∩ I_1| = 2, |I_0 ∩ I_2| = 2, |I_1 ∩ I_2| = 2, |I_2 ∩ I_3| = 2, others 1.
    # sim(0,1) = w0 w1/2 + w0 w2/2 + w1 w2/2 = 1/8 + 1/12 + 1/12 = 7/24
    # sim(1,2): users {2,3} -> w2 w3 / 2 = 1/12;  sim(0,2): one user only -> none.
    items_of = {0: {0, 1}, 1: {0, 1}, 2: {0, 1, 2}, 3: {1, 2}}
    got, w = kernel_scores(items_of, 4, 3, 0.0, 0.0, 1.0, backend=backend)
    assert got == pytest.approx({(0, 1): 7 / 24, (1, 0): 7 / 24, (1, 2): 1 / 12, (2, 1): 1 / 12})
    assert w == 3 + 3 + 1 + 1  # terms added: 3 pairs each way for (0,1), 1 each way for (1,2)
    # alpha2 = 1 adds one to every overlap.
    got, _ = kernel_scores(items_of, 4, 3, 0.0, 1.0, 1.0, backend=backend)
    assert got[(0, 1)] == pytest.approx((1 / 4 + 1 / 6 + 1 / 6) / 3)
    # User-user on the transposed graph: items 0,1 -> w = 1/|U_i|: w0 = 1/3, w1 = 1/4, w2 = 1/2.
    # Users 0 and 1 share items {0, 1}: |U_0 ∩ U_1| = 3 -> (1/3)(1/4)/3 = 1/36.
    users_of = transpose(items_of)
    got, _ = kernel_scores(users_of, 3, 4, 0.0, 0.0, 1.0, backend=backend)
    assert got[(0, 1)] == pytest.approx(1 / 36)
    assert got[(2, 3)] == pytest.approx((1 / 4) * (1 / 2) / 2)
    assert (0, 3) not in got  # share item 1 only


def test_caps_drop_users_and_sample_items() -> None:
    user = np.array([0, 0, 1, 1, 1, 2, 3, 3, 4, 4, 5, 5])
    item = np.array([0, 1, 0, 1, 2, 0, 0, 1, 0, 1, 0, 1])
    # min 2 drops user 2 (1 item); max 2 drops user 1 (3 items).
    u, i = swing.capped_edges(user, item, 6, 3, 2, 2, 1000, 0)
    assert sorted(set(u.tolist())) == [0, 3, 4, 5]
    # Item 0 then has users {0,3,4,5}; a cap of 2 keeps 2 of them, by seed and item only.
    u, i = swing.capped_edges(user, item, 6, 3, 2, 2, 2, 7)
    assert (i == 0).sum() == 2 and (i == 1).sum() == 2
    perm = np.random.default_rng(0).permutation(len(user))
    u2, i2 = swing.capped_edges(user[perm], item[perm], 6, 3, 2, 2, 2, 7)
    np.testing.assert_array_equal(u, u2)
    np.testing.assert_array_equal(i, i2)
    # Another item id range (more items) does not change item 0's sample.
    u3, i3 = swing.capped_edges(user, item, 6, 50, 2, 2, 2, 7)
    assert set(u3[i3 == 0].tolist()) == set(u[i == 0].tolist())


edges = st.lists(st.tuples(st.integers(0, 11), st.integers(0, 9)), min_size=0, max_size=90)


@backends
@settings(max_examples=150, deadline=None)
@given(
    pairs=edges,
    min_items=st.integers(1, 3),
    extra_items=st.integers(0, 8),
    max_users=st.integers(2, 8),
    seed=st.integers(0, 2**63),
    alpha1=st.sampled_from([0.0, 1.5, 15.0, 0.7]),
    alpha2=st.sampled_from([0.0, 0.5, 2.0, 0.1, 1 / 3]),
    beta=st.sampled_from([0.0, 0.3, 1.0]),
    cuts=st.lists(st.integers(0, 12), max_size=3),
    max_pairs=st.integers(1, 40),
)
def test_matches_reference(
    pairs: list[tuple[int, int]],
    min_items: int,
    extra_items: int,
    max_users: int,
    seed: int,
    alpha1: float,
    alpha2: float,
    beta: float,
    cuts: list[int],
    max_pairs: int,
    backend: str,
) -> None:
    n_users, n_items = 12, 10
    user = np.array([p[0] for p in pairs], dtype=np.int64)
    item = np.array([p[1] for p in pairs], dtype=np.int64)
    max_items = min_items + extra_items
    u, i = swing.capped_edges(user, item, n_users, n_items, min_items, max_items, max_users, seed)
    ref_graph = reference_caps(pairs, min_items, max_items, max_users, seed)
    assert as_dict(u, i) == ref_graph

    # Item-item; then user-user on the transposed graph.  The kernel adds each
    # score's terms in the reference's order, so the floats are equal, not just close.
    got, w = kernel_scores(
        ref_graph, n_users, n_items, alpha1, alpha2, beta, cuts, max_pairs, backend
    )
    ref = reference_swing(ref_graph, alpha1, alpha2, beta)
    assert got == ref
    got_uu, w_uu = kernel_scores(
        transpose(ref_graph), n_items, n_users, alpha1, alpha2, beta, cuts, max_pairs, backend
    )
    assert got_uu == reference_swing(transpose(ref_graph), alpha1, alpha2, beta)
    # Both count the 2x2 bicliques twice (once per ordered anchor pair).
    assert w == w_uu

    # Top-K over the same scores.
    if got:
        keys = sorted(got)
        a = np.array([k[0] for k in keys])
        n = np.array([k[1] for k in keys])
        s = np.array([got[k] for k in keys])
        for k in (1, 2, 50):
            ta, tn, ts, tr = swing.top_k_neighbors(a, n, s, k, backend)
            rows = list(zip(ta.tolist(), tn.tolist(), ts.tolist(), tr.tolist()))
            assert rows == reference_top_k(ref, k)
            assert ts.dtype == np.float32 and tr.dtype == np.int16


@backends
def test_top_k_ties_by_ascending_neighbor(backend: str) -> None:
    a = np.array([2, 5, 5, 5, 5])
    n = np.array([4, 9, 3, 7, 1])
    # 2.0 and 2.0000000001 are one float32: a tie, broken by the neighbour id.
    s = np.array([3.0, 1.0, 2.0000000001, 2.0, 0.5])
    ta, tn, ts, tr = swing.top_k_neighbors(a, n, s, 3, backend)
    assert ta.tolist() == [2, 5, 5, 5]
    assert tn.tolist() == [4, 3, 7, 9]
    assert tr.tolist() == [0, 0, 1, 2]


def test_split_by_work() -> None:
    work = np.array([100.0, 1, 1, 1, 1, 1, 1, 100, 1, 1])
    b = swing.split_by_work(work, 4)
    assert b[0] == 0 and b[-1] == len(work) and np.all(np.diff(b) >= 0)
    part_work = np.array([work[x:y].sum() for x, y in zip(b[:-1], b[1:])])
    assert part_work.sum() == work.sum() and part_work.max() <= 106
    assert swing.split_by_work(np.zeros(3), 2).tolist() == [0, 1, 3]


def test_block_plan_respects_budget() -> None:
    rng = np.random.default_rng(1)
    user = rng.integers(0, 200, 3000)
    item = rng.integers(0, 80, 3000)
    u, i = swing.capped_edges(user, item, 200, 80, 1, 1000, 1000, 0)
    m_ptr, _ = swing.to_csr(u, i, 200, 80)
    a_ptr, a_idx = swing.to_csr(i, u, 80, 200)
    blocks = swing.block_plan(a_ptr, m_ptr, a_idx, 0, 80, 200_000)
    assert blocks[0][0] == 0 and blocks[-1][1] == 80
    assert all(x[1] == y[0] for x, y in zip(blocks, blocks[1:]))
    assert len(blocks) > 3


@pytest.mark.skipif("numba" not in BACKENDS, reason="numba not installed")
def test_backends_same_bits_on_a_power_law_graph() -> None:
    rng = np.random.default_rng(4)
    n_users, n_items = 3000, 900
    pu = (np.arange(n_users) + 1.0) ** -0.8
    pi = (np.arange(n_items) + 1.0) ** -0.9
    user = rng.choice(n_users, 30_000, p=pu / pu.sum())
    item = rng.choice(n_items, 30_000, p=pi / pi.sum())
    u, i = swing.capped_edges(user, item, n_users, n_items, 2, 1000, 200, 1)
    m_ptr, m_idx = swing.to_csr(u, i, n_users, n_items)
    a_ptr, a_idx = swing.to_csr(i, u, n_items, n_users)
    weight = swing.member_weights(np.diff(m_ptr), 15.0, 0.3)
    out = {}
    for backend in ("numpy", "numba"):
        out[backend] = swing.swing_scores(
            a_ptr, a_idx, m_ptr, m_idx, weight, 0.3, n_items, 0, n_items, 5000, backend
        )
    a, n, s, w = out["numpy"]
    a2, n2, s2, w2 = out["numba"]
    assert np.all(np.diff(a2) >= 0)  # grouped by anchor
    order = np.lexsort((n2, a2))
    assert np.array_equal(a, a2[order]) and np.array_equal(n, n2[order])
    assert np.array_equal(s, s2[order]) and w == w2
    assert out["numba"][3] > 100_000


@backends
def test_overlaps_past_one_byte(backend: str) -> None:
    # Overlaps past one byte: members here share up to 599 targets besides the anchor,
    # others only a few, side by side in one anchor's triangle of counters (which must
    # be reset between anchors: every anchor is scored in one block).
    rng = np.random.default_rng(7)
    items_of = {m: set(range(600)) for m in range(3)}  # 3 heavy members: overlap 599
    items_of[3] = set(range(300, 600))  # overlaps 299 with the heavy ones
    for m in range(4, 40):
        items_of[m] = set(rng.choice(600, 5, replace=False).tolist())
    items_of[40] = {0, 1}
    users_of = transpose(items_of)
    for graph, n_members, n_targets in ((items_of, 41, 600), (users_of, 600, 41)):
        got, _ = kernel_scores(graph, n_members, n_targets, 5.0, 0.5, 0.3, backend=backend)
        want = reference_swing(graph, 5.0, 0.5, 0.3)
        assert got.keys() == want.keys()
        assert all(got[k] == want[k] for k in want)  # bit for bit
