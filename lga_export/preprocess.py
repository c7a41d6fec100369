"""Image preprocessing shared by training, evaluation, every runtime backend and predict:
resize to the model's input size (bilinear), then SAM's per-channel normalisation.

Reading files is `lga_export.imageio`'s job; upsampling logits back is `lga_export.resample`'s.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from lga_export.config import LGAConfig


def resize_rgb(rgb: np.ndarray, size: int) -> np.ndarray:
    """HxWx3 uint8 -> SxSx3 float32 in 0..255 (bilinear, as SAM's training resize)."""
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR), dtype=np.float32)


def normalize_pixels(pixels: np.ndarray, config: LGAConfig) -> np.ndarray:
    """HxWx3 float 0..255 -> 3xHxW float32 with SAM's mean/std."""
    mean = np.asarray(config.pixel_mean, dtype=np.float32)
    std = np.asarray(config.pixel_std, dtype=np.float32)
    return np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1), dtype=np.float32)


def normalize(rgb: np.ndarray, config: LGAConfig) -> np.ndarray:
    """HxWx3 uint8 -> 3xSxS float32: resized to the model's input size, SAM's mean/std."""
    return normalize_pixels(resize_rgb(rgb, config.image_size), config)
