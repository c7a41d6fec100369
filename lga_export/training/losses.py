"""Paper §3.2 loss: 0.5 Dice + 0.5 binary cross-entropy on the 256x256 mask logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per sample (sigmoid probabilities), averaged over the batch."""
    prob = torch.sigmoid(logits).flatten(1)
    target = target.flatten(1)
    inter = (prob * target).sum(1)
    dice = (2 * inter + eps) / (prob.sum(1) + target.sum(1) + eps)
    return (1 - dice).mean()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor,
                      dice_weight: float = 0.5, ce_weight: float = 0.5) -> torch.Tensor:
    """Bx1xMxM logits and 0/1 targets -> scalar loss."""
    ce = F.binary_cross_entropy_with_logits(logits, target)
    return dice_weight * soft_dice_loss(logits, target) + ce_weight * ce
