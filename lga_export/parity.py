"""Parity of a backend's outputs against the PyTorch reference, per sample."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from lga_export.metrics import mask_agreement, nonfinite_count


@dataclass(frozen=True)
class Parity:
    max_abs_diff: float
    dice_mean: float | None  # mask agreement; None for outputs that are not mask logits
    dice_p5: float | None
    dice_worst: float | None
    worst_sample: int | None
    nonfinite: int
    per_sample_dice: list[float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare(reference: np.ndarray, candidate: np.ndarray, masks: bool) -> Parity:
    """Max |difference|, NaN/Inf count, and (for mask logits) per-sample mask Dice agreement."""
    finite = np.isfinite(candidate)
    diff = float(np.max(np.abs(np.where(finite, candidate, 0) - reference))) if candidate.size else 0.0
    if not masks:
        return Parity(diff, None, None, None, None, nonfinite_count(candidate), [])
    dices = mask_agreement(reference, np.nan_to_num(candidate, nan=-1.0))
    worst = int(np.argmin(dices))
    return Parity(diff, float(np.mean(dices)), float(np.percentile(dices, 5)), float(dices[worst]), worst,
                  nonfinite_count(candidate), [float(d) for d in dices])


def failures(parity: Parity, atol: float | None, min_dice: float | None) -> list[str]:
    """Human-readable reasons a parity result misses its thresholds (empty when it passes)."""
    problems = []
    if parity.nonfinite:
        problems.append(f"{parity.nonfinite} NaN/Inf values")
    if atol is not None and parity.max_abs_diff > atol:
        problems.append(f"max abs difference {parity.max_abs_diff:.3g} > {atol:g}")
    if min_dice is not None and parity.dice_worst is not None and parity.dice_worst < min_dice:
        problems.append(f"mask Dice agreement {parity.dice_worst:.4f} < {min_dice} at sample {parity.worst_sample}")
    return problems
