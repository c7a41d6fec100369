"""Dice and IoU per sample at each mask's own size, averaged (the paper's Dice and mIoU)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from lga_export.data.dataset import SegmentationDataset, collate
from lga_export.data.lvit import Sample
from lga_export.imageio import read_mask
from lga_export.modeling.modes import eval_mode
from lga_export.training.step import forward_batch
from lga_export.verify.metrics import score_logits


@dataclass(frozen=True)
class SampleScore:
    name: str
    dice: float
    iou: float
    text: str


def predict_logits(model, embedder, samples: list[Sample], batch_size: int = 8, progress: bool = False,
                   prefixes=None, bf16: bool = False):
    """Yield (sample, 1xMxM numpy logits) in order, with no gradients (from cached prefix tokens
    when `prefixes`, a PrefixCache over `samples`, is given)."""
    from tqdm import tqdm

    dataset = SegmentationDataset(samples, model.config, train=False)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    with eval_mode(model), torch.no_grad():
        for batch in tqdm(loader, desc="eval", leave=False, disable=not progress):
            logits = forward_batch(model, embedder, batch, prefixes, bf16).numpy()
            for index, item in zip(batch["index"], logits):
                yield samples[index], item


def score_samples(model, embedder, samples: list[Sample], batch_size: int = 8, progress: bool = False,
                  prefixes=None, bf16: bool = False) -> list[SampleScore]:
    """Per-sample Dice / IoU with the prediction upsampled to the ground truth's size."""
    scores = []
    for sample, logits in predict_logits(model, embedder, samples, batch_size, progress, prefixes, bf16):
        scores.append(SampleScore(sample.name, *score_logits(logits, read_mask(sample.mask)), sample.text))
    return scores


def summarize(scores: list[SampleScore]) -> dict[str, float]:
    return {"dice": float(np.mean([s.dice for s in scores])), "miou": float(np.mean([s.iou for s in scores])),
            "samples": len(scores)}
