"""Image pre- and post-processing shared by training, every runtime backend and predict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from lga_export.config import LGAConfig
from lga_export.errors import LGAError


def load_rgb(path: str | Path) -> np.ndarray:
    """HxWx3 uint8 RGB (grayscale X-rays are repeated over the channels)."""
    path = Path(path)
    if not path.is_file():
        raise LGAError(f"{path}: no such image file")
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise LGAError(f"{path}: not a readable image ({exc.__class__.__name__}); give a PNG, JPEG or TIFF") from exc


def load_mask(path: str | Path) -> np.ndarray:
    """HxW bool mask from a 0/255 (or 0/1) PNG."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            gray = np.asarray(image.convert("L"))
    except (UnidentifiedImageError, OSError) as exc:
        raise LGAError(f"{path}: not a readable mask image ({exc.__class__.__name__})") from exc
    return gray > (127 if gray.max() > 1 else 0)


def normalize(rgb: np.ndarray, config: LGAConfig) -> np.ndarray:
    """HxWx3 uint8 -> 3xSxS float32: resized to the model's input size, SAM's mean/std."""
    size = config.image_size
    resized = np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR), dtype=np.float32)
    mean = np.asarray(config.pixel_mean, dtype=np.float32)
    std = np.asarray(config.pixel_std, dtype=np.float32)
    return np.ascontiguousarray(((resized - mean) / std).transpose(2, 0, 1))


def logits_to_mask(logits: np.ndarray, size: tuple[int, int], threshold: float = 0.0) -> np.ndarray:
    """1xMxM (or MxM) logits -> HxW bool mask, bilinear upsampling to the original size."""
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.asarray(logits, dtype=np.float32)).reshape(1, 1, *logits.shape[-2:])
    upsampled = F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)
    return upsampled[0, 0].numpy() > threshold
