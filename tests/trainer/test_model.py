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


def test_pairwise_dots_values_and_gradients_match_a_loop_reference():
    from trainer.model import pairwise_dots

    torch.manual_seed(0)
    n = 5
    rows, cols = torch.triu_indices(n, n, offset=1)
    pairs = rows * n + cols
    x = torch.randn(3, n, 4, dtype=torch.float64, requires_grad=True)
    out = pairwise_dots(x, pairs)
    # slow reference: one explicit dot per (sample, i < j), in triu order
    ref = torch.stack(
        [
            torch.stack([(x[b, i] * x[b, j]).sum() for i in range(n) for j in range(i + 1, n)])
            for b in range(3)
        ]
    )
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, x, g)
    (grad_ref,) = torch.autograd.grad(ref, x, g)
    torch.testing.assert_close(grad, grad_ref)
    assert torch.autograd.gradcheck(lambda t: pairwise_dots(t, pairs), (x,))
