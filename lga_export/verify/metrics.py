"""Segmentation metrics as the paper defines them (Dice and IoU of the foreground), and the
mask agreement used for parity between backends."""

from __future__ import annotations

import numpy as np


def dice(pred: np.ndarray, target: np.ndarray, eps: float = 1e-7) -> float:
    """Dice of two binary masks; two empty masks agree perfectly (1.0)."""
    pred, target = pred.astype(bool), target.astype(bool)
    total = pred.sum() + target.sum()
    if total == 0:
        return 1.0
    return float(2.0 * np.logical_and(pred, target).sum() / (total + eps))


def iou(pred: np.ndarray, target: np.ndarray, eps: float = 1e-7) -> float:
    """Intersection over union of two binary masks; two empty masks give 1.0."""
    pred, target = pred.astype(bool), target.astype(bool)
    union = np.logical_or(pred, target).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(pred, target).sum() / (union + eps))


def score_logits(logits: np.ndarray, target: np.ndarray, threshold: float = 0.0) -> tuple[float, float]:
    """(Dice, IoU) of the mask drawn from 1xMxM logits, upsampled to the label's size, against
    the label: the one scoring path of training, evaluation and lga-bench."""
    from lga_export.resample import logits_to_mask

    pred = logits_to_mask(np.nan_to_num(logits, nan=-1.0), target.shape[:2], threshold)
    return dice(pred, target), iou(pred, target)


def mask_agreement(logits_a: np.ndarray, logits_b: np.ndarray, threshold: float = 0.0) -> list[float]:
    """Per-sample Dice between the masks two backends draw from their logits (B x ... arrays)."""
    return [dice(a > threshold, b > threshold) for a, b in zip(logits_a, logits_b)]


def nonfinite_count(array: np.ndarray) -> int:
    return int(array.size - np.isfinite(array).sum())
