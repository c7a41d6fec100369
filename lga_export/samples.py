"""Real inputs for validation: QaTa-COV19 images and reports when present, else built-in samples.

The built-in samples are generated (no data files are shipped): chest-X-ray-like images with
two dark lung fields and bright lesions, with reports in QaTa's wording.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lga_export.data.lvit import reports_by_image
from lga_export.errors import LGAError
from lga_export.imageio import read_image, read_mask

_REPORTS = (
    "Bilateral pulmonary infection, two infected areas, all left lung and all right lung.",
    "Unilateral pulmonary infection, one infected area, lower right lung.",
    "Bilateral pulmonary infection, two infected areas, middle left lung and lower right lung.",
    "Unilateral pulmonary infection, one infected area, upper left lung.",
)


@dataclass(frozen=True)
class Sample:
    name: str
    rgb: np.ndarray  # HxWx3 uint8
    text: str
    mask: np.ndarray | None  # HxW bool ground truth, when known


def default_data_root() -> Path | None:
    """LGA_DATA_ROOT, else ../shared/data beside the current folder or the repository."""
    candidates = [os.environ.get("LGA_DATA_ROOT"), Path.cwd().parent / "shared" / "data",
                  Path(__file__).resolve().parents[3] / "shared" / "data"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "qata-cov19").is_dir():
            return Path(candidate)
    return None


def qata_samples(root: Path, count: int, split: str = "Val") -> list[Sample]:
    folder = root / "qata-cov19" / f"{split}_Folder"
    reports = reports_by_image(folder / f"{split}_text.csv")
    samples = []
    for name in sorted(reports)[:count]:
        mask_path = folder / "labelcol" / f"mask_{name}"
        samples.append(Sample(name, read_image(folder / "img" / name), reports[name],
                              read_mask(mask_path) if mask_path.is_file() else None))
    return samples


def synthetic_samples(count: int, size: int = 224, seed: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    samples = []
    for index in range(count):
        image = 0.75 + 0.05 * rng.standard_normal((size, size))
        for cx in (0.3, 0.7):
            lung = ((xx - cx) / 0.16) ** 2 + ((yy - 0.5) / 0.32) ** 2 < 1
            image[lung] -= 0.45
        lesion = ((xx - rng.uniform(0.2, 0.8)) / 0.08) ** 2 + ((yy - rng.uniform(0.3, 0.7)) / 0.1) ** 2 < 1
        image[lesion] += 0.3
        rgb = np.repeat((np.clip(image, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2)
        samples.append(Sample(f"synthetic_{index}.png", rgb, _REPORTS[index % len(_REPORTS)], lesion))
    return samples


def check_data_root(data_root: Path | None) -> None:
    """Refuse a --data that is not a data root up front (a typo must not fall back to synthetic samples)."""
    if data_root is not None and not (Path(data_root) / "qata-cov19" / "Val_Folder").is_dir():
        raise LGAError(f"{data_root}: no qata-cov19/Val_Folder in it; give the data root (LViT layout) or drop "
                       f"--data to use the built-in samples")


def validation_set(count: int, data_root: Path | None = None) -> tuple[list[Sample], str, Path | None]:
    """`count` samples, their kind ('qata-cov19 Val' or 'built-in synthetic samples') and the data
    root they were read from (None for the built-in ones): a manifest records the kind, not the path."""
    check_data_root(data_root)
    root = data_root or default_data_root()
    if root is not None and (root / "qata-cov19" / "Val_Folder").is_dir():
        return qata_samples(root, count), "qata-cov19 Val", root
    return synthetic_samples(count), "built-in synthetic samples", None


def validation_samples(count: int, data_root: Path | None = None) -> tuple[list[Sample], str]:
    """`count` samples and where they came from, for logs and reports ('qata-cov19 Val (ROOT)')."""
    samples, kind, root = validation_set(count, data_root)
    return samples, kind if root is None else f"{kind} ({root})"
