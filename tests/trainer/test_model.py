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


def _dlrrec(tower_dim: int):
    from torchrec.modules.embedding_configs import EmbeddingBagConfig
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    from trainer.model import DLRREC, ArchSizes

    torch.manual_seed(0)
    ebc = EmbeddingBagCollection(
        tables=[EmbeddingBagConfig(name="t_u", embedding_dim=8, num_embeddings=5, feature_names=["u"])]
    )
    sizes = ArchSizes(dense_arch=(4,), over_arch=(6,), tower_hidden=16, tower_dim=tower_dim, dropout=0.0)
    return DLRREC(ebc, dense_in=2, towers=2, content_dim=12, sizes=sizes).eval()


def test_narrow_towers_are_lifted_into_the_interaction_by_a_linear_map():
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    from serve.export import tower_layers
    from serve.model import Towers

    model = _dlrrec(tower_dim=4)
    assert _dlrrec(tower_dim=0).projection_arch.weights[-1].shape == (2, 16, 8)  # 0 = D: no map
    dense, content = torch.randn(3, 2), torch.randn(3, 2, 12)
    kjt = KeyedJaggedTensor.from_lengths_sync(["u"], torch.tensor([1, 4, 2]), torch.ones(3, dtype=torch.long))
    z = model.projection_arch(content)
    assert z.shape == (3, 2, 4)  # what InfoNCE reads (project_one) stays tower_dim
    m, c = model.tower_map.weights[0], model.tower_map.biases[0]
    lifted = torch.stack([z[:, t] @ m[t] + c[t] for t in range(2)], dim=1)  # [3, 2, 8]
    e = model.sparse_arch(kjt)
    ref = model.over_arch(model.inter_arch(model.dense_arch(dense), torch.cat([e, lifted], dim=1)))
    torch.testing.assert_close(model(dense, kjt, content)[0], ref)
    # serving folds the map into the towers' last layer: the same 8-d tower outputs
    towers = Towers(*tower_layers({k: v.detach() for k, v in model.state_dict().items()}))
    for t in range(2):
        torch.testing.assert_close(towers(content[:, t], t), lifted[:, t])


def test_tower_dim_above_embedding_dim_is_refused():
    import pytest

    from dlrrec.config import ConfigError
    from trainer.config import TrainConfig

    with pytest.raises(ConfigError, match="train.tower_dim"):
        TrainConfig(run_dir="r", embedding_dim=32, tower_dim=64).validate()


def test_dropout_drops_at_rate_p_and_scales_the_rest_and_their_gradients():
    from trainer.model import Dropout

    p, n = 0.1, 1_000_000
    drop = Dropout(p)
    x = torch.rand(n, dtype=torch.float64) + 1.0  # no zeros of its own
    x.requires_grad_(True)
    torch.manual_seed(3)
    y = drop(x)
    kept = y != 0
    # the drop rate is p within 5 standard errors; kept elements are scaled by 1 / (1 - p)
    rate = 1.0 - float(kept.double().mean())
    assert abs(rate - p) < 5 * (p * (1 - p) / n) ** 0.5, rate
    torch.testing.assert_close(y[kept], x.detach()[kept] / (1 - p))
    g = torch.randn(n, dtype=torch.float64)
    y.backward(g)
    assert x.grad is not None
    torch.testing.assert_close(x.grad, torch.where(kept, g / (1 - p), 0.0))
    # the mask is a function of the torch seed (resumed runs draw the same ones)
    torch.manual_seed(3)
    assert torch.equal(drop(x.detach()), y.detach())
    drop.eval()
    assert drop(x) is x
