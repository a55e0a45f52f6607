"""PNG plots of a training run (rank 0): loss curves, val AUC per epoch (per step with
`val_every_steps`), test ROC."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def write_plots(out: Path, test_roc: tuple[np.ndarray, np.ndarray, float] | None) -> list[Path]:
    """loss.png, val_auc.png and, given test's (FPR, TPR, AUC), roc.png (none when sealed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    steps = [r for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    written = []

    # per-step losses when logged, else the per-epoch means
    points = steps or [{"step": r["step"], **r["train"]} for r in epochs]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ("loss", "rec", "item_item", "user_user"):
        if any(p.get(key) for p in points):
            ax.plot([p["step"] for p in points], [p[key] for p in points], label=key, marker="." if not steps else None)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.legend()
    fig.tight_layout()
    written.append(plots / "loss.png")
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    inner = [r for r in records if r["kind"] == "val"]  # `val_every_steps` validations
    if inner:  # every validation by step; the epoch ends marked
        every = sorted(inner + epochs, key=lambda r: r["step"])
        ax.plot([r["step"] for r in every], [r["val"]["auc"] for r in every], marker=".", label="every validation")
        ax.plot([r["step"] for r in epochs], [r["val"]["auc"] for r in epochs], "o", label="epoch ends")
        ax.set_xlabel("step")
        ax.legend()
    else:
        ax.plot([r["epoch"] for r in epochs], [r["val"]["auc"] for r in epochs], marker="o")
        ax.set_xlabel("epoch")
    ax.set_ylabel("val AUC")
    fig.tight_layout()
    written.append(plots / "val_auc.png")
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)

    if test_roc is None:
        return written
    fpr, tpr, test_auc = test_roc
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(fpr, tpr, label=f"test AUC {test_auc:.4f}")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(loc="lower right")
    fig.tight_layout()
    written.append(plots / "roc.png")
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)
    return written
