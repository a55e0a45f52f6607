"""InfoNCE with in-batch negatives over SWING positives (pure tensor math).

Shape legend: B = batch size, D = projection dim.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

_NEG = -1e9  # a finite "minus infinity": masked logits stay NaN-free under autograd


def info_nce(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    anchor_ids: torch.Tensor,
    positive_ids: torch.Tensor,
    tau: float,
) -> torch.Tensor:
    """Mean InfoNCE over anchors that have a positive.

    Row i scores anchor i against every in-batch positive; its own positive is the
    target and the other anchors' positives are the negatives. Anchors without a
    SWING neighbour (`positive_ids == -1`) are masked out of the mean and their
    (absent) positives are never used as negatives. A candidate is also not a
    negative when it is the same entity as the anchor or as the anchor's positive
    (false-negative masking).

    Args:
        anchor: [B, D] projections of the anchors.
        positive: [B, D] projections of each anchor's sampled positive.
        anchor_ids: [B] entity ids of the anchors.
        positive_ids: [B] entity ids of the positives, -1 where there is none.
        tau: temperature.

    Returns:
        A scalar; 0 (with a graph) when no anchor has a positive.
    """
    a = F.normalize(anchor, dim=-1)
    p = F.normalize(positive, dim=-1)
    logits = a @ p.t() / tau  # [B, B]
    valid = positive_ids >= 0
    b = anchor.shape[0]
    eye = torch.eye(b, dtype=torch.bool, device=anchor.device)
    false_neg = (positive_ids.unsqueeze(0) == positive_ids.unsqueeze(1)) | (
        positive_ids.unsqueeze(0) == anchor_ids.unsqueeze(1)
    )
    masked = (~valid.unsqueeze(0) | false_neg) & ~eye
    logits = logits.masked_fill(masked, _NEG)
    targets = torch.arange(b, device=anchor.device)
    per_row = F.cross_entropy(logits, targets, reduction="none")
    w = valid.to(per_row.dtype)
    return (per_row * w).sum() / w.sum().clamp_min(1.0)
