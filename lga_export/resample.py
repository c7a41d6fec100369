"""Bilinear resizing of mask logits in numpy, numerically equal to torch's F.interpolate.

The ONNX/TensorRT inference path must not import torch just to resize a 256x256 logit map to the
image size; masks must still match the PyTorch reference pixel for pixel, so this reproduces
`F.interpolate(x, size, mode="bilinear", align_corners=False)` (no antialias) exactly.
"""

from __future__ import annotations

import numpy as np


def _axis(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices i0, i1 and weight of i1 for one axis, as torch computes them.

    Half-pixel centres: src = (dst + 0.5) * in/out - 0.5, clamped below at 0; i1 is clamped to the
    last row, so edges replicate. Downsampling samples the same way (torch does not low-pass).
    """
    # Rounded as torch's CPU kernel rounds: the scale in float32, the index product in float64
    # (C++ promotes `scale * (dst + 0.5)`), the result back to float32; any other order moves
    # sample positions by ~4e-6 px and logits by up to ~3e-5.
    scale = np.float64(np.float32(in_size / out_size))
    src = ((np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0.0))
    i0 = src.astype(np.int64)  # floor, as src >= 0
    i1 = np.minimum(i0 + 1, in_size - 1)
    return i0, i1, src - i0.astype(np.float32)


def upsample_bilinear(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """1xHxW or HxW logits -> float32 array of `size`, like torch bilinear with align_corners=False.

    Separable: interpolate along x first (in_h x out_w, small), then along y, so a 256 -> 3000x3000
    resize costs two gathers over the output instead of four.
    """
    array = np.asarray(logits, dtype=np.float32)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise ValueError(f"expected 1xHxW or HxW logits, got shape {np.shape(logits)}")
    out_h, out_w = (int(s) for s in size)
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"output size must be positive, got {size}")
    y0, y1, wy = _axis(array.shape[0], out_h)
    x0, x1, wx = _axis(array.shape[1], out_w)
    # Same association as torch's kernel, w0y * (w0x * a + w1x * b) + w1y * (...); torch's SIMD
    # rounding still differs by an ulp or so (~2e-6 on logits of magnitude 10).
    cols = array[:, x0] * (1 - wx) + array[:, x1] * wx
    return cols[y0] * (1 - wy)[:, None] + cols[y1] * wy[:, None]


def logits_to_mask(logits: np.ndarray, size: tuple[int, int], threshold: float = 0.0) -> np.ndarray:
    """1xMxM (or MxM) logits -> HxW bool mask at the original image size."""
    return upsample_bilinear(logits, size) > threshold
