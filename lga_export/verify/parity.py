"""Parity of one output against the reference's, per sample, and the reasons it misses a tolerance."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from lga_export.contract import Tolerance
from lga_export.verify.metrics import mask_agreement, nonfinite_count


@dataclass(frozen=True)
class Parity:
    max_abs_diff: float
    nonfinite: int
    # Mask figures (None for outputs that are not mask logits):
    dice_mean: float | None = None
    dice_p5: float | None = None
    dice_worst: float | None = None
    worst_sample: str | None = None
    per_sample_dice: tuple[float, ...] = ()
    reference_foreground: tuple[float, ...] = ()  # fraction of mask pixels the reference draws, per sample

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def vacuous(self) -> bool:
        """True when every reference mask is empty: agreement of two empty masks proves nothing."""
        return bool(self.reference_foreground) and max(self.reference_foreground) == 0.0


def compare(reference: np.ndarray, candidate: np.ndarray, names: list[str] | None = None,
            masks: bool = False) -> Parity:
    """Max |difference| over the finite values, NaN/Inf count, and for mask logits the per-sample
    mask Dice agreement (NaN counts as background) with the worst sample's name."""
    finite = np.isfinite(candidate)
    diff = float(np.max(np.abs(np.where(finite, candidate, 0) - reference))) if candidate.size else 0.0
    nonfinite = nonfinite_count(candidate)
    if not masks:
        return Parity(diff, nonfinite)
    dices = mask_agreement(reference, np.nan_to_num(candidate, nan=-1.0))
    worst = int(np.argmin(dices))
    names = names or [str(i) for i in range(len(dices))]
    foreground = tuple(float((r > 0).mean()) for r in reference)
    return Parity(diff, nonfinite, float(np.mean(dices)), float(np.percentile(dices, 5)), float(dices[worst]),
                  names[worst], tuple(float(d) for d in dices), foreground)


def failures(parity: Parity, tolerance: Tolerance | None, check_atol: bool = True) -> list[str]:
    """Why `parity` misses `tolerance` (empty when it passes). NaN/Inf always fails."""
    problems = []
    if parity.nonfinite:
        problems.append(f"{parity.nonfinite} NaN/Inf values")
    if tolerance is None:
        return problems
    if check_atol and tolerance.atol is not None and parity.max_abs_diff > tolerance.atol:
        problems.append(f"max abs difference {parity.max_abs_diff:.3g} > {tolerance.atol:g}")
    if parity.dice_worst is not None and parity.dice_worst < tolerance.min_dice:
        problems.append(f"mask Dice agreement {parity.dice_worst:.4f} < {tolerance.min_dice} "
                        f"at sample {parity.worst_sample}")
    return problems
