"""Image preprocessing shared by training, evaluation, every runtime backend and predict:
resize to the model's input size (bilinear), then the model's normalisation: SAM's per-channel
mean/std (`mean_std`), or LiteMedSAM's per-image min-max to [0, 1] (`min_max`).

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
    """HxWx3 float 0..255 -> 3xHxW float32, normalised as the model was trained. One channel at a
    time into the output: the same float32 arithmetic as `(pixels - mean) / std`, 6x faster at 256
    px than broadcasting and transposing (0.13 vs 0.75 ms), which counts beside a 20-40 ms graph."""
    pixels = np.asarray(pixels, dtype=np.float32)
    out = np.empty((3, *pixels.shape[:2]), dtype=np.float32)
    if config.normalization == "min_max":  # LiteMedSAM: (x - min) / max(max - min, 1e-8) over the image
        low, high = np.float32(pixels.min()), np.float32(pixels.max())
        scale = np.float32(max(float(high - low), 1e-8))
        for channel in range(3):
            np.subtract(pixels[..., channel], low, out=out[channel])
            np.divide(out[channel], scale, out=out[channel])
        return out
    for channel, (mean, std) in enumerate(zip(config.pixel_mean, config.pixel_std)):
        np.subtract(pixels[..., channel], np.float32(mean), out=out[channel])
        np.divide(out[channel], np.float32(std), out=out[channel])
    return out


def normalize(rgb: np.ndarray, config: LGAConfig) -> np.ndarray:
    """HxWx3 uint8 -> 3xSxS float32: resized to the model's input size, SAM's mean/std."""
    return normalize_pixels(resize_rgb(rgb, config.image_size), config)
