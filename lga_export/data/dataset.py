"""A torch Dataset over an indexed split: model-sized, SAM-normalised images, masks at the
decoder's 256x256, and the report text (embedded by the training loop, once per distinct text).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from lga_export.config import LGAConfig
from lga_export.data.augment import AugmentConfig, augment
from lga_export.data.lvit import Sample
from lga_export.preprocess import load_mask, load_rgb


class SegmentationDataset(Dataset):
    """item -> dict(image 3xSxS float, mask 1xMxM float 0/1, text str, index int)."""

    def __init__(self, samples: list[Sample], config: LGAConfig, *, train: bool = False,
                 seed: int = 0, augment_config: AugmentConfig | None = None) -> None:
        self.samples = samples
        self.config = config
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.augment_config = augment_config or AugmentConfig()
        self._mean = torch.tensor(config.pixel_mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(config.pixel_std, dtype=torch.float32).view(3, 1, 1)

    def set_epoch(self, epoch: int) -> None:
        """Augmentation draws depend on (seed, epoch, index): reproducible and resumable."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        size, mask_size = self.config.image_size, self.config.mask_size
        rgb = Image.fromarray(load_rgb(sample.image)).resize((size, size), Image.BILINEAR)
        image = torch.from_numpy(np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1).copy())
        mask = torch.from_numpy(load_mask(sample.mask).astype(np.float32))[None, None]
        mask = F.interpolate(mask, size=(mask_size, mask_size), mode="nearest")[0]
        if self.train:
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 1_000_003 + index)
            image, mask = augment(image, mask, gen, self.augment_config)
        image = (image - self._mean) / self._std
        return {"image": image, "mask": mask, "text": sample.text, "index": index}
