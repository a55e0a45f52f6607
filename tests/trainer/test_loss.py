import math

import pytest
import torch
from dist_helpers import devices, run_ranks

from trainer.loss import false_negative_pairs, info_nce, mixed_log_q


def info_nce_reference(a, p, aid, pid, tau):
    """Plain loops: row i's negatives are positives j != i that exist and are not false negatives."""
    a = torch.nn.functional.normalize(a, dim=-1)
    p = torch.nn.functional.normalize(p, dim=-1)
    losses = []
    for i in range(len(a)):
        if pid[i] < 0:
            continue
        pos = math.exp(float(a[i] @ p[i]) / tau)
        neg = 0.0
        for j in range(len(a)):
            if j == i or pid[j] < 0 or pid[j] == pid[i] or pid[j] == aid[i]:
                continue
            neg += math.exp(float(a[i] @ p[j]) / tau)
        losses.append(-math.log(pos / (pos + neg)))
    return sum(losses) / max(len(losses), 1)


def test_info_nce_matches_loop_reference():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        b = 12
        a, p = torch.randn(b, 8, generator=g), torch.randn(b, 8, generator=g)
        aid = torch.randint(0, 6, (b,), generator=g)
        pid = torch.randint(-1, 6, (b,), generator=g)
        got = float(info_nce(a, p, aid, pid, 0.3))
        assert abs(got - info_nce_reference(a, p, aid, pid, 0.3)) < 1e-4


def test_masked_anchors_and_no_positives():
    a, p = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8)
    ids = torch.arange(4)
    none = torch.full((4,), -1)
    loss = info_nce(a, p, ids, none, 0.2)
    assert float(loss) == 0.0
    loss.backward()  # still differentiable
    assert torch.isfinite(a.grad).all()


def test_perfect_alignment_has_low_loss():
    x = torch.eye(6) * 5
    loss = info_nce(x, x, torch.arange(6) + 100, torch.arange(6), 0.05)
    assert float(loss) < 1e-6


def info_nce_mixed_reference(a, p, aid, pid, tau, neg=None, nid=None, q=None, u=0.0):
    """Plain loops over in-batch + extra candidates, with the logQ term written out."""
    a = torch.nn.functional.normalize(a.double(), dim=-1)
    cands = [torch.nn.functional.normalize(p.double(), dim=-1)]
    cids = [int(x) for x in pid]
    if neg is not None:
        cands.append(torch.nn.functional.normalize(neg.double(), dim=-1))
        cids += [int(x) for x in nid]
    c = torch.cat(cands)
    b, n = len(a), len(c)

    def logit(i, j):
        s = float(a[i] @ c[j]) / tau
        if q is not None:
            s -= math.log(max((b * float(q[j]) + (n - b) * u) / n, 1e-12))
        return s

    losses = []
    for i in range(b):
        if pid[i] < 0:
            continue
        terms = [logit(i, i)]
        for j in range(n):
            if j == i or cids[j] < 0 or cids[j] == int(pid[i]) or cids[j] == int(aid[i]):
                continue
            terms.append(logit(i, j))
        top = max(terms)
        lse = top + math.log(sum(math.exp(t - top) for t in terms))
        losses.append(lse - terms[0])
    return sum(losses) / max(len(losses), 1)


def _case(seed, b=24, m=6, d=8, ids=10):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(b, d, generator=g, dtype=torch.float64)
    p = torch.randn(b, d, generator=g, dtype=torch.float64)
    n = torch.randn(m, d, generator=g, dtype=torch.float64)
    aid = torch.randint(0, ids, (b,), generator=g)
    pid = torch.randint(-1, ids, (b,), generator=g)
    nid = torch.randint(-1, ids, (m,), generator=g)
    q = torch.rand(b + m, generator=g, dtype=torch.float64) / ids
    return a, p, n, aid, pid, nid, q


def test_mixed_negatives_and_logq_match_loop_reference_one_piece_and_chunked():
    for seed in range(10):
        a, p, n, aid, pid, nid, q = _case(seed)
        for args in [(None, None, None, 0.0), (n, nid, None, 0.0), (n, nid, q, 0.02), (None, None, q[:24], 0.0)]:
            ref = info_nce_mixed_reference(a, p, aid, pid, 0.3, *args)
            for chunk in (0, 1, 5, 24, 100):
                got = float(info_nce(a, p, aid, pid, 0.3, *args, chunk_size=chunk))
                assert abs(got - ref) < 1e-9, (seed, chunk, got, ref)


def test_chunked_gradients_equal_one_piece():
    for seed in range(5):
        a, p, n, aid, pid, nid, q = _case(seed, b=40, m=9)
        grads = []
        for chunk in (0, 7, 16):
            xs = [t.clone().requires_grad_(True) for t in (a, p, n)]
            loss = info_nce(xs[0], xs[1], aid, pid, 0.2, xs[2], nid, q, 0.01, chunk_size=chunk)
            grads.append(torch.autograd.grad(loss, xs))
        for other in grads[1:]:
            for g0, g1 in zip(grads[0], other):
                torch.testing.assert_close(g1, g0, rtol=1e-10, atol=1e-12)


def test_chunked_passes_gradcheck():
    a, p, n, aid, pid, nid, q = _case(3, b=9, m=3, d=4, ids=5)
    xs = tuple(t.clone().requires_grad_(True) for t in (a, p, n))
    assert torch.autograd.gradcheck(
        lambda x, y, z: info_nce(x, y, aid, pid, 0.5, z, nid, q, 0.1, chunk_size=4), xs
    )


def test_chunked_float32_close_to_one_piece_at_scale():
    g = torch.Generator().manual_seed(0)
    b, m, d = 1024, 256, 32
    a, p, n = (torch.randn(k, d, generator=g) for k in (b, b, m))
    aid = torch.randint(0, 300, (b,), generator=g)
    pid = torch.randint(-1, 300, (b,), generator=g)
    nid = torch.randint(0, 300, (m,), generator=g)
    out = []
    for chunk in (0, 128):
        xs = [t.clone().requires_grad_(True) for t in (a, p, n)]
        loss = info_nce(xs[0], xs[1], aid, pid, 0.2, xs[2], nid, chunk_size=chunk)
        out.append((loss.detach(), torch.autograd.grad(loss, xs)))
    torch.testing.assert_close(out[1][0], out[0][0], rtol=1e-5, atol=1e-6)
    for g0, g1 in zip(out[0][1], out[1][1]):
        torch.testing.assert_close(g1, g0, rtol=1e-4, atol=1e-7)


def test_extra_negative_equal_to_anchor_or_positive_is_not_a_negative():
    a, p, n, aid, pid, nid, _ = _case(1, b=6, m=0)
    pid = torch.arange(6) + 10  # every anchor has a positive
    base = float(info_nce(a, p, aid, pid, 0.3))
    extra = torch.randn(2, a.shape[1], dtype=torch.float64)
    for chunk in (0, 2):
        # candidate 0 is anchor 0's own entity, candidate 1 its positive: both masked for row 0
        only_row0 = torch.tensor([int(aid[0]), int(pid[0])])
        got = info_nce(a, p, aid, pid, 0.3, extra, only_row0, chunk_size=chunk)
        row_terms = [info_nce(a[i : i + 1], p[i : i + 1], aid[i : i + 1], pid[i : i + 1], 0.3) for i in range(6)]
        assert float(got) > base  # other rows do get the extra negatives
        # row 0 alone with those extras masked equals row 0 with none
        alone = info_nce(a[:1], p[:1], aid[:1], pid[:1], 0.3, extra, only_row0, chunk_size=chunk)
        assert float(alone) == float(row_terms[0])
    unused = info_nce(a, p, aid, pid, 0.3, extra, torch.tensor([-1, -1]))
    assert float(unused) == base


def test_uniform_logq_cancels_without_extra_negatives():
    a, p, n, aid, pid, nid, _ = _case(2)
    q = torch.full((a.shape[0],), 0.05, dtype=torch.float64)
    assert float(info_nce(a, p, aid, pid, 0.3, candidate_q=q)) == pytest.approx(
        float(info_nce(a, p, aid, pid, 0.3)), abs=1e-12
    )


def test_mixed_log_q_is_the_expected_share_of_slots():
    q = torch.tensor([0.5, 0.25, 0.0], dtype=torch.float64)
    got = mixed_log_q(q, n_batch=4, n_extra=2, uniform_p=0.1)
    want = torch.log(torch.tensor([(4 * 0.5 + 0.2) / 6, (4 * 0.25 + 0.2) / 6, 0.2 / 6], dtype=torch.float64))
    torch.testing.assert_close(got, want)


def test_false_negative_pairs_equal_the_dense_mask():
    g = torch.Generator().manual_seed(5)
    for _ in range(10):
        b, m = 30, 7
        aid = torch.randint(0, 8, (b,), generator=g)
        pid = torch.randint(-1, 8, (b,), generator=g)
        cid = torch.cat([pid, torch.randint(-1, 8, (m,), generator=g)])
        rows, cols = false_negative_pairs(aid, pid, cid)
        assert torch.all(rows[1:] >= rows[:-1])
        dense = (cid[None] == aid[:, None]) | ((cid[None] == pid[:, None]) & (pid[:, None] >= 0))
        dense.fill_diagonal_(False)
        got = torch.zeros_like(dense)
        got[rows, cols] = True
        assert torch.equal(got, dense)


def test_anchor_positive_sets_are_not_negatives():
    """With each anchor's whole SWING list given, no candidate in it is a negative."""
    for seed in range(6):
        a, p, n, aid, pid, nid, q = _case(seed)
        g = torch.Generator().manual_seed(seed)
        b = a.shape[0]
        lengths = torch.randint(0, 4, (b,), generator=g)
        ids = torch.randint(0, 10, (int(lengths.sum()),), generator=g)
        sets = [ids[o - k : o].tolist() for o, k in zip(lengths.cumsum(0).tolist(), lengths.tolist())]
        cand_ids = torch.cat([pid, nid]).tolist()
        cands = torch.nn.functional.normalize(torch.cat([p, n]), dim=-1)
        an = torch.nn.functional.normalize(a, dim=-1)
        losses = []
        for i in range(b):  # the loop reference
            if pid[i] < 0:
                continue
            terms = [float(an[i] @ cands[i]) / 0.3]
            for j, cj in enumerate(cand_ids):
                if j != i and cj >= 0 and cj not in (int(pid[i]), int(aid[i])) and cj not in sets[i]:
                    terms.append(float(an[i] @ cands[j]) / 0.3)
            losses.append(math.log(sum(math.exp(t) for t in terms)) - terms[0])
        ref = sum(losses) / max(len(losses), 1)
        for chunk in (0, 5):
            got = info_nce(a, p, aid, pid, 0.3, n, nid, chunk_size=chunk, anchor_sets=(lengths, ids))
            assert abs(float(got) - ref) < 1e-9, (seed, chunk)
        xs = [t.clone().requires_grad_(True) for t in (a, p, n)]
        g0 = torch.autograd.grad(info_nce(*xs[:2], aid, pid, 0.3, xs[2], nid, anchor_sets=(lengths, ids)), xs)
        g1 = torch.autograd.grad(
            info_nce(*xs[:2], aid, pid, 0.3, xs[2], nid, chunk_size=5, anchor_sets=(lengths, ids)), xs
        )
        for x0, x1 in zip(g0, g1):
            torch.testing.assert_close(x1, x0, rtol=1e-10, atol=1e-12)


def _global_case(seed: int, b: int = 24):
    """A global batch: inputs as `_case`, plus each anchor's positive set (CSR)."""
    a, p, n, aid, pid, nid, q = _case(seed, b=b)
    g = torch.Generator().manual_seed(seed + 100)
    lengths = torch.randint(0, 4, (b,), generator=g)
    set_ids = torch.randint(0, 10, (int(lengths.sum()),), generator=g)
    return a, p, n, aid, pid, nid, q, lengths, set_ids


def _nce_on_ranks(rank: int, device: str, cases: list[tuple[int, int, bool]]) -> list[dict]:
    """Each rank scores its contiguous slice of the global batch through a shared linear
    tower; returns the rank-mean loss and the rank-averaged tower gradients (as DDP
    applies them) per case (seed, chunk_size, with logQ / extras / sets)."""
    import torch.distributed as dist
    from dist_helpers import init_group

    from trainer.loss import InfoNCETerm, info_nce_terms_across_ranks

    dev = init_group(device)
    world = dist.get_world_size()
    out = []
    try:
        for seed, chunk, full in cases:
            a, p, n, aid, pid, nid, q, lengths, set_ids = (t.to(dev) for t in _global_case(seed))
            big_b = a.shape[0]
            b = big_b // world
            sl = slice(rank * b, (rank + 1) * b)
            start = int(lengths[: sl.start].sum())
            sets = (lengths[sl], set_ids[start : start + int(lengths[sl].sum())])
            torch.manual_seed(0)
            tower = torch.nn.Linear(8, 8).double().to(dev)
            extra = (tower(n), nid, torch.cat([q[:big_b][sl], q[big_b:]]), 0.02) if full else ()
            term = InfoNCETerm(tower(a[sl]), tower(p[sl]), aid[sl], pid[sl], *extra, anchor_sets=sets if full else None)
            calls: list[str] = []  # the collectives of one forward and backward
            real = {name: getattr(dist, name) for name in ("all_gather", "all_reduce")}
            for name, fn in real.items():
                setattr(dist, name, lambda *args, _n=name, _f=fn, _c=calls, **kw: _c.append(_n) or _f(*args, **kw))
            try:
                (loss,) = info_nce_terms_across_ranks([term], 0.3, chunk)
                loss.backward()
            finally:
                for name, fn in real.items():
                    setattr(dist, name, fn)
            stats = [loss.detach().clone(), *(w.grad for w in tower.parameters())]
            for t in stats:
                dist.all_reduce(t)
                t /= world
            out.append({"loss": float(stats[0]), "grads": [t.cpu().numpy() for t in stats[1:]], "calls": calls})
    finally:
        dist.destroy_process_group()
    return out


@pytest.mark.parametrize("device", devices(2))
def test_one_rank_and_two_give_the_same_loss_and_gradients(device: str):
    # in-batch candidates are the GLOBAL batch's positives: the rank count does not matter
    import numpy as np

    cases = [(0, 0, True), (1, 5, True), (2, 0, False), (3, 7, False)]
    (one,) = run_ranks(_nce_on_ranks, 1, device, cases)
    two = run_ranks(_nce_on_ranks, 2, device, cases)
    assert [r["loss"] for r in two[0]] == [r["loss"] for r in two[1]]
    # each collective is a wait for the slowest rank: one gather (positives, their ids and
    # q together) forward, one all-reduce backward, with or without logQ
    assert all(r["calls"] == ["all_gather", "all_reduce"] for r in two[0] + two[1]), two[0]
    assert all(r["calls"] == [] for r in one)
    for case, r1, r2 in zip(cases, one, two[0]):
        assert abs(r1["loss"] - r2["loss"]) < 1e-12, (case, r1["loss"], r2["loss"])
        assert r1["loss"] > 0.5, case
        for g1, g2 in zip(r1["grads"], r2["grads"]):
            np.testing.assert_allclose(g2, g1, rtol=1e-10, atol=1e-13, err_msg=str(case))


def _two_terms_on_ranks(rank: int, logq: bool) -> dict:
    """Two InfoNCE terms (each its own tower, as the item and user terms) through one
    `info_nce_terms_across_ranks` call on this rank's slice; the rank-mean of each term,
    the rank-averaged gradients and the collectives of one forward and backward."""
    import torch.distributed as dist
    from dist_helpers import init_group

    from trainer.loss import InfoNCETerm, info_nce_terms_across_ranks

    init_group("cpu")
    world = dist.get_world_size()
    try:
        torch.manual_seed(0)
        towers = [torch.nn.Linear(8, 8).double(), torch.nn.Linear(8, 6).double()]
        terms = []
        for seed, tower in zip((11, 12), towers):
            a, p, n, aid, pid, nid, q, lengths, set_ids = _global_case(seed)
            b = a.shape[0] // world
            sl = slice(rank * b, (rank + 1) * b)
            start = int(lengths[: sl.start].sum())
            sets = (lengths[sl], set_ids[start : start + int(lengths[sl].sum())])
            qs = torch.cat([q[: a.shape[0]][sl], q[a.shape[0] :]]) if logq else None
            terms.append(InfoNCETerm(tower(a[sl]), tower(p[sl]), aid[sl], pid[sl], tower(n), nid, qs, 0.02, sets))
        calls: list[str] = []
        real = {name: getattr(dist, name) for name in ("all_gather", "all_reduce")}
        for name, fn in real.items():
            setattr(dist, name, lambda *args, _n=name, _f=fn, _c=calls, **kw: _c.append(_n) or _f(*args, **kw))
        try:
            losses = info_nce_terms_across_ranks(terms, 0.3, chunk_size=5)
            sum(losses).backward()
        finally:
            for name, fn in real.items():
                setattr(dist, name, fn)
        stats = [*(x.detach().clone() for x in losses), *(w.grad for t in towers for w in t.parameters())]
        for t in stats:
            dist.all_reduce(t)
            t /= world
        return {"losses": [float(x) for x in stats[:2]], "grads": [t.numpy() for t in stats[2:]], "calls": calls}
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("logq", [False, True])
def test_two_terms_share_one_gather_and_equal_one_rank(logq: bool):
    import numpy as np

    (one,) = run_ranks(_two_terms_on_ranks, 1, logq)
    two = run_ranks(_two_terms_on_ranks, 2, logq)
    # the item and user terms of a step: one gather forward, one all-reduce backward in all
    assert two[0]["calls"] == two[1]["calls"] == ["all_gather", "all_reduce"]
    assert min(one["losses"]) > 0.5
    np.testing.assert_allclose(two[0]["losses"], one["losses"], rtol=0, atol=1e-12)
    for g1, g2 in zip(one["grads"], two[0]["grads"], strict=True):
        np.testing.assert_allclose(g2, g1, rtol=1e-10, atol=1e-13)


def _late_rank_timings(rank: int, late_s: float) -> dict:
    """Rank 1 arrives `late_s` late at the gather and again at the backward. Rank 0's
    times (from its own start of each phase): when `send_positives` returned, when the
    gathered positives arrived, when the backward reached a branch created between send
    and receive (the model's forward in training), and when the backward ended."""
    import time

    import torch.distributed as dist
    from dist_helpers import init_group

    from trainer.loss import InfoNCETerm, info_nce_terms_across_ranks, send_positives

    init_group("cpu")
    try:
        a, p, n, aid, pid, nid, q, lengths, set_ids = _global_case(5)
        b = a.shape[0] // 2
        sl = slice(rank * b, (rank + 1) * b)
        tower = torch.nn.Linear(8, 8).double()
        term = InfoNCETerm(tower(a[sl]), tower(p[sl]), aid[sl], pid[sl])
        stamps: dict[str, float] = {}
        if rank == 1:
            time.sleep(late_s)
        t0 = time.perf_counter()
        flight = send_positives([term])
        stamps["sent"] = time.perf_counter() - t0
        side = torch.ones(3, dtype=torch.float64, requires_grad=True) * 2  # the model's forward
        side.register_hook(lambda g: stamps.__setitem__("side", time.perf_counter()))
        side_sum = side.sum()
        (nce,) = info_nce_terms_across_ranks([term], 0.3, 0, flight)
        stamps["received"] = time.perf_counter() - t0
        dist.barrier()
        if rank == 1:
            time.sleep(late_s)
        t1 = time.perf_counter()
        (nce + side_sum).backward()
        stamps["side"] -= t1
        stamps["backward"] = time.perf_counter() - t1
        return stamps
    finally:
        dist.destroy_process_group()


def test_positives_travel_while_the_rank_computes():
    # the gather is launched before the model's forward and waited for after it, and the
    # gradient's all-reduce is launched before the model's backward and waited for after:
    # a rank that arrives early computes instead of waiting at either collective
    late = 1.5
    early, _ = run_ranks(_late_rank_timings, 2, late)
    assert early["sent"] < 0.5 * late, early
    assert early["received"] > 0.8 * late, early
    assert early["side"] < 0.5 * late, early
    assert early["backward"] > 0.8 * late, early
