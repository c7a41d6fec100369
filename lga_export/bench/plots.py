"""PNG plots (matplotlib Agg): per-iteration latency spread and per-sample Dice agreement."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lga_export.bench.markdown_report import PARTS


def write_plots(results: dict[str, Any], out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = results["cases"]
    labels = [(f"{label}\nb{batch}", figures) for label, case in cases.items() for batch, figures in case["batches"].items()]
    written = []
    fig, axes = plt.subplots(len(PARTS), 1, figsize=(max(6.0, 0.9 * len(labels) + 2), 3.2 * len(PARTS)), squeeze=False)
    for axis, (part, name) in zip(axes[:, 0], PARTS):
        axis.boxplot([f["latency"][part]["times_ms"] for _, f in labels], showmeans=True)
        axis.set_xticks(range(1, len(labels) + 1), [l for l, _ in labels], fontsize=7)
        axis.set_yscale("log")
        axis.set_ylabel("ms per batch")
        axis.set_title(f"{name} latency (per-iteration spread)")
        axis.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "latency.png", dpi=110)
    plt.close(fig)
    written.append("latency.png")

    fig, axis = plt.subplots(figsize=(max(6.0, 0.9 * len(labels) + 2), 4))
    for index, (_, figures) in enumerate(labels, start=1):
        parity = figures["parity"]["end_to_end"]
        values = parity["per_sample_dice"]
        axis.scatter([index] * len(values), values, s=12, alpha=0.6)
        axis.hlines(parity["dice_mean"], index - 0.3, index + 0.3, color="black")
        threshold = figures["parity"]["min_dice"]
        axis.hlines(threshold, index - 0.4, index + 0.4, color="red", linestyle="--")
    axis.set_xticks(range(1, len(labels) + 1), [l for l, _ in labels], fontsize=7)
    axis.set_ylabel("mask Dice vs reference")
    axis.set_title("per-sample mask agreement with PyTorch FP32 (black: mean, red dashed: the precision's gate)")
    axis.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "parity.png", dpi=110)
    plt.close(fig)
    written.append("parity.png")
    return written
