"""Paper §3.2 augmentation with torch only: random crop, rotation, translation, scaling
(one affine warp applied identically to image and mask), then brightness and contrast (image only),
and optionally per-pixel noise of a few grey levels (image only; `lga-export train --input-noise`).

Every draw comes from a `torch.Generator` the caller seeds, so a run is reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    crop: tuple[float, float] = (0.8, 1.0)  # side of the random crop, as a fraction of the image
    rotation_deg: float = 15.0
    translation: float = 0.1  # fraction of the side
    scale: tuple[float, float] = (0.9, 1.1)
    brightness: float = 0.2  # additive, fraction of the 0..255 range
    contrast: tuple[float, float] = (0.8, 1.2)
    paper: bool = True  # the paper's warp, brightness and contrast above (off: noise only)
    noise: float = 0.0  # per-pixel uniform noise of +-level grey levels, level drawn per image from [0, noise]


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=gen))


def random_affine(gen: torch.Generator, cfg: AugmentConfig) -> torch.Tensor:
    """A 2x3 theta for `F.affine_grid` (output coords -> input coords, normalised [-1, 1])."""
    crop = _uniform(gen, *cfg.crop)
    # crop centre anywhere that keeps the crop inside the image
    cx, cy = _uniform(gen, -(1 - crop), 1 - crop), _uniform(gen, -(1 - crop), 1 - crop)
    angle = math.radians(_uniform(gen, -cfg.rotation_deg, cfg.rotation_deg))
    scale = _uniform(gen, *cfg.scale)
    tx, ty = (_uniform(gen, -cfg.translation, cfg.translation) * 2 for _ in range(2))
    cos, sin = math.cos(angle), math.sin(angle)
    zoom = crop / scale
    theta = torch.tensor([[cos * zoom, -sin * zoom, cx + tx],
                          [sin * zoom, cos * zoom, cy + ty]], dtype=torch.float32)
    return theta


def warp(image: torch.Tensor, mask: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CxHxW image (bilinear, zero fill) and 1xhxw mask (nearest) under the same geometric map."""
    grid_i = F.affine_grid(theta[None], [1, *image.shape], align_corners=False)
    grid_m = F.affine_grid(theta[None], [1, *mask.shape], align_corners=False)
    image = F.grid_sample(image[None], grid_i, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    mask = F.grid_sample(mask[None], grid_m, mode="nearest", padding_mode="zeros", align_corners=False)[0]
    return image, mask


def photometric(image: torch.Tensor, gen: torch.Generator, cfg: AugmentConfig) -> torch.Tensor:
    """Brightness and contrast on a 0..255 float image."""
    contrast = _uniform(gen, *cfg.contrast)
    brightness = _uniform(gen, -cfg.brightness, cfg.brightness) * 255.0
    mean = image.mean()
    return ((image - mean) * contrast + mean + brightness).clamp(0.0, 255.0)


def pixel_noise(image: torch.Tensor, gen: torch.Generator, level: float) -> torch.Tensor:
    """Uniform noise of +-l grey levels on a 0..255 float image, l drawn from [0, level].

    Why: a per-image min-max normalisation (lite) undoes brightness and contrast, so those teach
    nothing there; half a grey level of noise already moves lite's masks as much as BF16 does
    (record 2026-12-01-lite-precision-sensitivity). Drawing l from 0 keeps clean images in every batch."""
    if level <= 0:
        return image
    amplitude = _uniform(gen, 0.0, level)
    noise = (torch.rand(image.shape, generator=gen) * 2.0 - 1.0) * amplitude
    return (image + noise).clamp(0.0, 255.0)


def augment(image: torch.Tensor, mask: torch.Tensor, gen: torch.Generator,
            cfg: AugmentConfig = AugmentConfig()) -> tuple[torch.Tensor, torch.Tensor]:
    """0..255 float CxHxW image and 0/1 float 1xhxw mask -> augmented pair (same sizes)."""
    if cfg.paper:
        image, mask = warp(image, mask, random_affine(gen, cfg))
        image = photometric(image, gen, cfg)
    return pixel_noise(image, gen, cfg.noise), mask
