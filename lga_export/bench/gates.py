"""The two CI gates: worst per-sample mask agreement and image-graph latency ratio vs the reference."""

from __future__ import annotations

from typing import Any


def check_gates(results: dict[str, Any], min_dice_agreement: float | None,
                max_latency_ratio: float | None) -> dict[str, Any]:
    """One line per failed threshold, naming the backend, precision and batch."""
    failures: list[str] = []
    reference = results["reference"]
    for label, case in results["cases"].items():
        if label == reference:
            continue
        for batch, figures in case["batches"].items():
            parity = figures["parity"]
            worst = parity["dice_agreement_worst"]
            if min_dice_agreement is not None and (worst is None or worst < min_dice_agreement):
                shown = "none" if worst is None else f"{worst:.4f}"
                failures.append(f"{label} batch {batch}: worst mask Dice agreement {shown} < "
                                f"{min_dice_agreement} (sample {parity['worst_sample']})")
            ratio = figures.get("image_latency_ratio")
            if max_latency_ratio is not None and ratio is not None and ratio > max_latency_ratio:
                failures.append(f"{label} batch {batch}: image-graph p50 latency ratio vs {reference} "
                                f"{ratio:.3g} > {max_latency_ratio}")
    return {"min_dice_agreement": min_dice_agreement, "max_latency_ratio": max_latency_ratio,
            "failures": failures, "passed": not failures}
