"""Preprocessing shared by training and every backend: the fast per-channel normalisation is
the same float32 arithmetic as SAM's broadcast `(pixels - mean) / std`, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from lga_export.config import get_preset
from lga_export.preprocess import normalize, normalize_pixels


@pytest.mark.parametrize("shape", [(256, 256, 3), (17, 31, 3)])
def test_normalize_pixels_matches_the_broadcast_formula_exactly(shape):
    config = get_preset("tiny")
    pixels = np.random.default_rng(0).uniform(0, 255, shape).astype(np.float32)
    mean = np.asarray(config.pixel_mean, dtype=np.float32)
    std = np.asarray(config.pixel_std, dtype=np.float32)
    out = normalize_pixels(pixels, config)
    assert out.dtype == np.float32 and out.flags["C_CONTIGUOUS"] and out.shape == (3, *shape[:2])
    np.testing.assert_array_equal(out, ((pixels - mean) / std).transpose(2, 0, 1))


def test_normalize_resizes_uint8_rgb_to_the_model_input():
    config = get_preset("tiny")
    rgb = np.zeros((224, 300, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    out = normalize(rgb, config)
    assert out.shape == (3, config.image_size, config.image_size)
    assert np.allclose(out[0], (255 - config.pixel_mean[0]) / config.pixel_std[0])
    assert np.allclose(out[1], -config.pixel_mean[1] / config.pixel_std[1])
