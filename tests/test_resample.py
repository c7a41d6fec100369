"""numpy bilinear resize and mask vs torch's F.interpolate, the reference the masks were validated with."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lga_export.resample import logits_to_mask, upsample_bilinear

SIZES = [
    ((256, 256), (1024, 1024)),  # typical upsample
    ((256, 256), (224, 224)),  # QaTa: slight downsample
    ((256, 256), (37, 19)),  # strong, non-square downsample
    ((256, 256), (1000, 750)),  # non-square upsample
    ((64, 64), (333, 517)),  # odd sizes
    ((7, 5), (13, 3)),  # non-square input, up in one axis and down in the other
    ((1, 1), (4, 4)),
    ((256, 256), (256, 256)),  # identity
]


def _torch(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    tensor = torch.from_numpy(logits.astype(np.float32))[None, None]
    return F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


@pytest.mark.parametrize("shape,size", SIZES)
def test_upsample_matches_torch(shape, size):
    logits = np.random.default_rng(sum(shape) + sum(size)).normal(0.0, 4.0, shape).astype(np.float32)
    ours = upsample_bilinear(logits[None], size)
    assert ours.dtype == np.float32 and ours.shape == size
    assert np.abs(ours - _torch(logits, size)).max() < 1e-5
    assert np.array_equal(upsample_bilinear(logits, size), ours)  # MxM and 1xMxM alike


@pytest.mark.parametrize("shape,size", SIZES)
def test_mask_matches_torch(shape, size):
    logits = np.random.default_rng(7).normal(0.0, 4.0, shape).astype(np.float32)
    reference = _torch(logits, size)
    for threshold in (0.0, 1.5):
        differ = logits_to_mask(logits[None], size, threshold) != (reference > threshold)
        assert not np.any(differ & (np.abs(reference - threshold) >= 1e-5))


def test_rejects_batches_and_empty_sizes():
    with pytest.raises(ValueError):
        upsample_bilinear(np.zeros((2, 4, 4), np.float32), (8, 8))
    with pytest.raises(ValueError):
        upsample_bilinear(np.zeros((4, 4), np.float32), (0, 8))


def test_large_upsample_is_fast():
    """A 256 -> 3000x3000 mask is a per-image postprocess step: it must not dominate inference."""
    import time

    logits = np.random.default_rng(0).normal(size=(1, 256, 256)).astype(np.float32)
    start = time.perf_counter()
    mask = logits_to_mask(logits, (3000, 3000))
    assert mask.shape == (3000, 3000) and mask.dtype == bool
    assert time.perf_counter() - start < 2.0


def test_import_without_torch():
    code = ("import sys, lga_export.tokenization, lga_export.resample; "
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
            "sys.exit(f'imported {bad}' if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
