import torch

from trainer.model import InteractionArch, ProjectionArch


def test_projection_towers_equal_separate_mlps():
    torch.manual_seed(0)
    arch = ProjectionArch(towers=3, in_dim=384, hidden=16, out_dim=8, dropout=0.0)
    x = torch.randn(5, 3, 384)
    out = arch(x)
    assert out.shape == (5, 3, 8)
    for t in range(3):
        h = torch.relu(x[:, t] @ arch.weights[0][t] + arch.biases[0][t])
        ref = h @ arch.weights[1][t] + arch.biases[1][t]
        torch.testing.assert_close(out[:, t], ref)
        torch.testing.assert_close(arch.project_one(t, x[:, t]), ref)


def test_interaction_pairs():
    arch = InteractionArch(4)
    d, others = torch.randn(2, 5), torch.randn(2, 3, 5)
    out = arch(d, others)
    assert out.shape == (2, 5 + 6)
    allv = torch.cat([d[:, None], others], 1)
    torch.testing.assert_close(out[:, 5], (allv[:, 0] * allv[:, 1]).sum(-1))
    torch.testing.assert_close(out[:, -1], (allv[:, 2] * allv[:, 3]).sum(-1))
