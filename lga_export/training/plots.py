"""Figures (matplotlib, Agg backend: no display needed): learning curve, best/worst cases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lga_export.fileio import atomic_file


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curve(history: list[dict[str, Any]], steps: list[dict[str, Any]], path: Path) -> Path:
    """Training loss per step (left) and validation Dice / mIoU per epoch (right)."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    if steps:
        left.plot([s["step"] for s in steps], [s["loss"] for s in steps], label="train loss")
    if history:
        left.plot([h["step"] for h in history], [h["train_loss"] for h in history], "o", label="epoch mean")
        right.plot([h["epoch"] for h in history], [h["val_dice"] for h in history], "o-", label="val Dice")
        right.plot([h["epoch"] for h in history], [h["val_miou"] for h in history], "s-", label="val mIoU")
    left.set_xlabel("step")
    left.set_ylabel("0.5 Dice + 0.5 BCE")
    left.legend()
    right.set_xlabel("epoch")
    right.set_ylim(0, 1)
    right.set_xlim(left=0)
    right.legend()
    right.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_file(path, force=True) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def cases_figure(cases: list[dict[str, Any]], path: Path, force: bool = False) -> Path:
    """One row per case: image with its report, ground truth, prediction (title: Dice)."""
    import textwrap

    plt = _pyplot()
    fig, axes = plt.subplots(len(cases), 3, figsize=(9, 3.2 * len(cases)), squeeze=False)
    for row, case in zip(axes, cases):
        row[0].imshow(case["picture"])
        row[0].set_title(f"{case['label']}: {case['name']}", fontsize=8)
        row[0].set_xlabel("\n".join(textwrap.wrap(case["text"], 45)), fontsize=7)
        row[1].imshow(case["target"], cmap="gray")
        row[1].set_title("ground truth", fontsize=8)
        row[2].imshow(case["pred"], cmap="gray")
        row[2].set_title(f"prediction (Dice {case['dice']:.3f})", fontsize=8)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    with atomic_file(path, force=force) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return path
