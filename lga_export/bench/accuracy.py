"""Parity of one backend against the reference on real samples, plus Dice/mIoU against the ground truth."""

from __future__ import annotations

from typing import Any

import numpy as np

from lga_export.metrics import dice, iou, nonfinite_count
from lga_export.parity import compare
from lga_export.preprocess import logits_to_mask
from lga_export.runtime.pipeline import Segmenter


def chunks(count: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, count)) for start in range(0, count, size)]


def run_samples(segmenter: Segmenter, samples: list, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """(text embeddings, mask logits) of every sample, run end to end in chunks of `batch`."""
    texts, logits = [], []
    for part in chunks(len(samples), batch):
        group = samples[part]
        embedding = segmenter.text_embeddings([s.text for s in group])
        texts.append(embedding)
        logits.append(segmenter.image_logits([s.rgb for s in group], embedding))
    return np.concatenate(texts), np.concatenate(logits)


def ground_truth_scores(logits: np.ndarray, samples: list) -> dict[str, Any]:
    """Mean Dice and mIoU of the thresholded, upsampled masks over the samples that have a label."""
    dices, ious = [], []
    for sample, logit in zip(samples, logits):
        if sample.mask is None:
            continue
        mask = logits_to_mask(np.nan_to_num(logit, nan=-1.0), sample.mask.shape[:2])
        dices.append(dice(mask, sample.mask))
        ious.append(iou(mask, sample.mask))
    if not dices:
        return {"gt_samples": 0, "gt_dice": None, "gt_miou": None}
    return {"gt_samples": len(dices), "gt_dice": float(np.mean(dices)), "gt_miou": float(np.mean(ious))}


def parity_entry(reference: tuple[np.ndarray, np.ndarray], candidate: tuple[np.ndarray, np.ndarray],
                 samples: list) -> dict[str, Any]:
    """Text-embedding and mask-logit parity against the reference, and ground-truth scores."""
    ref_text, ref_logits = reference
    text, logits = candidate
    masks = compare(ref_logits, logits, masks=True)
    entry: dict[str, Any] = {
        "text_max_abs_diff": compare(ref_text, text, masks=False).max_abs_diff,
        "text_nonfinite": nonfinite_count(text),
        "logits_max_abs_diff": masks.max_abs_diff,
        "logits_nonfinite": masks.nonfinite,
        "dice_agreement_mean": masks.dice_mean,
        "dice_agreement_p5": masks.dice_p5,
        "dice_agreement_worst": masks.dice_worst,
        "worst_sample": samples[masks.worst_sample].name if masks.worst_sample is not None else None,
        "per_sample_dice_agreement": masks.per_sample_dice,
    }
    entry.update(ground_truth_scores(logits, samples))
    return entry
