import math

import torch

from trainer.loss import info_nce


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
