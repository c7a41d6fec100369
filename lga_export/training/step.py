"""One batch through the model: the forward pass shared by training and evaluation, and one
optimizer step. Its own module so evaluation (which the training loop calls) does not import
the loop back."""

from __future__ import annotations

import torch

from lga_export.training.losses import segmentation_loss


def forward_batch(model, embedder, batch: dict, prefixes=None, bf16: bool = False) -> torch.Tensor:
    """Mask logits of a batch: from cached prefix tokens when `prefixes` (a PrefixCache) is given,
    else from the pixels; the forward pass under BF16 autocast with `bf16`."""
    tokens = prefixes.get(batch["index"], batch["pixels"]) if prefixes is not None else None
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        text = embedder(batch["text"])
        if tokens is not None:
            logits = model.forward_suffix(tokens, text)
        else:
            logits = model.forward_image(batch["pixels"], text)
    return logits.float()


def train_step(model, optimizer: torch.optim.Optimizer, embedder, batch: dict,
               params: list[torch.nn.Parameter], grad_clip: float | None = None, prefixes=None,
               bf16: bool = False) -> torch.Tensor:
    """One optimizer step on a batch (image, mask, text); returns the loss before the step."""
    logits = forward_batch(model, embedder, batch, prefixes, bf16)
    loss = segmentation_loss(logits, batch["mask"])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    return loss.detach()
