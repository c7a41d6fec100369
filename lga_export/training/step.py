"""One batch through the model: the forward pass shared by training and evaluation, and one
optimizer step. Its own module so evaluation (which the training loop calls) does not import
the loop back."""

from __future__ import annotations

import torch

from lga_export.training.losses import segmentation_loss


def perturb_prefix(tokens: torch.Tensor, relative: float, generator: torch.Generator) -> torch.Tensor:
    """Cached prefix tokens plus Gaussian noise, per image of a standard deviation drawn uniformly
    from [0, relative] x that image's token RMS.

    Why: half a grey level of input noise moves lite's prefix tokens by 9% of their RMS and BF16
    by 7%, enough to flip masks on some X-rays (record 2026-12-01-lite-precision-sensitivity);
    i.i.d. noise of that size moves the masks as much (record 2026-12-02-lite-prefix-noise), and
    a cached prefix never varies, so training sees it only this way. Drawing the size from 0 keeps
    clean inputs in every batch."""
    rms = tokens.pow(2).mean(dim=tuple(range(1, tokens.dim())), keepdim=True).sqrt()
    scale = torch.rand(rms.shape, generator=generator) * relative * rms
    return tokens + torch.randn(tokens.shape, generator=generator) * scale


def forward_batch(model, embedder, batch: dict, prefixes=None, bf16: bool = False,
                  prefix_noise: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mask logits of a batch: from cached prefix tokens when `prefixes` (a PrefixCache) is given
    (perturbed by `perturb_prefix` when `prefix_noise` > 0), else from the pixels; the forward pass
    under BF16 autocast with `bf16`."""
    tokens = prefixes.get(batch["index"], batch["pixels"]) if prefixes is not None else None
    if tokens is not None and prefix_noise > 0:
        tokens = perturb_prefix(tokens, prefix_noise, generator or torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        text = embedder(batch["text"])
        if tokens is not None:
            logits = model.forward_suffix(tokens, text)
        else:
            logits = model.forward_image(batch["pixels"], text)
    return logits.float()


def train_step(model, optimizer: torch.optim.Optimizer, embedder, batch: dict,
               params: list[torch.nn.Parameter], grad_clip: float | None = None, prefixes=None,
               bf16: bool = False, prefix_noise: float = 0.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """One optimizer step on a batch (image, mask, text); returns the loss before the step."""
    logits = forward_batch(model, embedder, batch, prefixes, bf16, prefix_noise, generator)
    loss = segmentation_loss(logits, batch["mask"])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    return loss.detach()
