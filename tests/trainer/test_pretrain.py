import numpy as np
import torch

from trainer.model import ProjectionArch
from trainer.pretrain import pretrain_towers_autoencoder


def _arch() -> ProjectionArch:
    torch.manual_seed(1)
    return ProjectionArch(towers=2, in_dim=32, hidden=16, out_dim=8, dropout=0.0)


def test_autoencoder_towers_learn_freeze_and_are_deterministic():
    rng = np.random.default_rng(0)
    # data on a 4-d subspace of R^32: a 32 -> 16 -> 8 tower can reconstruct it
    basis = rng.normal(size=(4, 32))
    a = rng.normal(size=(300, 4)) @ basis
    b = rng.normal(size=(200, 4)) @ basis[::-1]
    arch = _arch()
    before = [w.detach().clone() for w in arch.weights]
    mse = pretrain_towers_autoencoder(arch, [a, b], epochs=150, lr=3e-3, seed=0)
    assert mse[0] < 0.2 * a.var() and mse[1] < 0.2 * b.var(), mse
    assert all(not p.requires_grad for p in arch.parameters())
    assert not torch.equal(before[0], arch.weights[0])
    # the same seed gives the same towers: ranks agree without communication
    again = _arch()
    pretrain_towers_autoencoder(again, [a, b], epochs=150, lr=3e-3, seed=0)
    for x, y in zip(arch.parameters(), again.parameters()):
        assert torch.equal(x, y)
