"""The paper's V0 baseline: projection towers trained separately, then frozen.

V0 (MMREC) reduces the 384-d content vectors with an MLP optimised on its own
objective, not on the ranking loss. Here each tower is the encoder of an
autoencoder (tower: C -> H -> D, decoder: D -> H -> C) trained to reconstruct the
entity content vectors of the training history; the DLRM is then trained with the
towers frozen. Same tower shape and size as the co-trained model, so the comparison
isolates *how* the reduction is trained.

Shape legend: N = entities, C = content dim, D = projection dim.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from trainer.model import ProjectionArch


def pretrain_towers_autoencoder(
    arch: ProjectionArch,
    vectors: list[np.ndarray],
    epochs: int,
    lr: float,
    seed: int,
    batch_size: int = 256,
) -> list[float]:
    """Fit tower t as the encoder of an autoencoder on `vectors[t]` ([N_t, C]); freeze it.

    Deterministic for a fixed seed, so every rank computes the same weights without
    communication. Returns the final reconstruction MSE of each tower.
    """
    if len(vectors) != arch.towers:
        raise ValueError(f"{len(vectors)} vector tables for {arch.towers} towers")
    g = torch.Generator().manual_seed(seed)
    out_dim = arch.weights[-1].shape[-1]
    finals: list[float] = []
    for t, x_np in enumerate(vectors):
        x_all = torch.from_numpy(np.asarray(x_np, dtype=np.float32))
        c = x_all.shape[1]
        hidden = arch.weights[0].shape[-1] if len(arch.weights) > 1 else out_dim
        torch.manual_seed(seed + t)
        decoder = nn.Sequential(nn.Linear(out_dim, hidden), nn.ReLU(), nn.Linear(hidden, c))
        params = [p for p in arch.parameters()] + list(decoder.parameters())
        opt = torch.optim.Adam(params, lr=lr)
        n = x_all.shape[0]
        for _ in range(epochs):
            perm = torch.randperm(n, generator=g)
            for s in range(0, n, batch_size):
                x = x_all[perm[s : s + batch_size]]
                z = arch.project_one(t, x)
                loss = nn.functional.mse_loss(decoder(z), x)
                opt.zero_grad()
                loss.backward()
                # only tower t's slices receive gradient; other towers are untouched
                opt.step()
        with torch.no_grad():
            recon = decoder(arch.project_one(t, x_all))
            finals.append(float(nn.functional.mse_loss(recon, x_all)))
    for p in arch.parameters():
        p.requires_grad_(False)
    return finals
