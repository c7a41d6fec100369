"""A torch Dataset over an indexed split: model-sized, SAM-normalised images, masks at the
decoder's 256x256, and the report text (embedded by the training loop, once per distinct text).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from lga_export.config import LGAConfig
from lga_export.data.augment import AugmentConfig, augment
from lga_export.data.lvit import Sample
from lga_export.errors import LGAError
from lga_export.imageio import read_image, read_mask
from lga_export.preprocess import normalize_pixels, resize_rgb


class SegmentationDataset(Dataset):
    """item -> dict(pixels 3xSxS float, mask 1xMxM float 0/1, text str, index int)."""

    def __init__(self, samples: list[Sample], config: LGAConfig, *, train: bool = False,
                 seed: int = 0, augment_config: AugmentConfig | None = None) -> None:
        self.samples = samples
        self.config = config
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.augment_config = augment_config or AugmentConfig()

    def set_epoch(self, epoch: int) -> None:
        """Augmentation draws depend on (seed, epoch, index): reproducible and resumable."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        size, mask_size = self.config.image_size, self.config.mask_size
        rgb, target = read_image(sample.image), read_mask(sample.mask)
        check_mask_size(sample, rgb.shape[:2], target.shape)
        pixels = resize_rgb(rgb, size)
        mask = torch.from_numpy(target.astype(np.float32))[None, None]
        mask = F.interpolate(mask, size=(mask_size, mask_size), mode="nearest")[0]
        if self.train:  # augmentation works on 0..255 pixels, before the shared normalisation
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 1_000_003 + index)
            chw, mask = augment(torch.from_numpy(pixels.transpose(2, 0, 1).copy()), mask, gen, self.augment_config)
            pixels = chw.numpy().transpose(1, 2, 0)
        image = torch.from_numpy(normalize_pixels(pixels, self.config))
        return {"pixels": image, "mask": mask, "text": sample.text, "index": index}


def check_mask_size(sample: Sample, image_shape: tuple[int, ...], mask_shape: tuple[int, ...]) -> None:
    """A mask of another size than its image would be stretched onto it and scored silently."""
    if tuple(image_shape) != tuple(mask_shape):
        raise LGAError(f"{sample.mask}: mask is {mask_shape[1]}x{mask_shape[0]} but its image {sample.image.name} is "
                       f"{image_shape[1]}x{image_shape[0]}; give the mask at the image's size")


def collate(batch: list[dict]) -> dict:
    """A DataLoader batch: stacked pixels and masks, lists of texts and sample indexes."""
    return {"pixels": torch.stack([b["pixels"] for b in batch]), "mask": torch.stack([b["mask"] for b in batch]),
            "text": [b["text"] for b in batch], "index": [b["index"] for b in batch]}
