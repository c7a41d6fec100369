"""LViT-layout data: every variant loads, broken samples fail clearly or are skipped and counted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import DATA_ROOT
from lga_export.config import get_preset
from lga_export.data import index_split, read_text_table
from lga_export.data.augment import AugmentConfig, augment
from lga_export.data.dataset import SegmentationDataset
from lga_export.errors import LGAError

TEXTS = ["Bilateral pulmonary infection, two infected areas, midlle lower left lung..",
         "Unilateral pulmonary infection, oneinfected area, upper right lung.",
         "The nuclei are evenly distributed."]


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_lvit(root: Path, split: str = "Train", n: int = 3, *, style: str = "qata", suffix: str = ".png",
              size: int = 32) -> Path:
    """A small LViT folder. style: qata (csv keyed by mask name), monuseg (xlsx, same names),
    mosmed (`;` csv with a `text` column keyed by image name)."""
    folder = root / f"{split}_Folder"
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        name = f"case_{i}"
        image = rng.integers(0, 255, (size, size), dtype=np.uint8)
        mask = np.zeros((size, size), dtype=np.uint8)
        mask[4:4 + 4 * (i + 1), 8:20] = 255
        _png(folder / "img" / f"{name}{suffix}", image)
        mask_name = f"mask_{name}.png" if style == "qata" else f"{name}.png"
        _png(folder / "labelcol" / mask_name, mask)
        key = mask_name if style == "qata" else f"{name}.png"
        rows.append((key, TEXTS[i % len(TEXTS)]))
    if style == "qata":
        pd.DataFrame(rows, columns=["Image", "Description"]).to_csv(folder / f"{split}_text.csv", index=False)
    elif style == "monuseg":
        pd.DataFrame(rows, columns=["Image", "Description"]).to_excel(folder / f"{split}_text.xlsx", index=False)
    else:
        (folder / f"{split}_text.csv").write_text("Image;text\n" + "".join(f"{k};{t}\n" for k, t in rows))
    return root


@pytest.mark.parametrize("style,suffix", [("qata", ".png"), ("monuseg", ".png"), ("monuseg", ".tif"),
                                          ("mosmed", ".png")])
def test_every_variant_loads_with_text_as_written(tmp_path, style, suffix):
    root = make_lvit(tmp_path, "Test", style=style, suffix=suffix)
    index = index_split(root, "Test")
    assert [s.name for s in index.samples] == ["case_0", "case_1", "case_2"]
    assert [s.text for s in index.samples] == TEXTS  # typos and ".." kept
    assert all(s.image.suffix == suffix for s in index.samples)
    assert index.skipped == {}


def test_split_names_are_forgiving_but_unknown_ones_fail(tmp_path):
    root = make_lvit(tmp_path, "Val")
    assert len(index_split(root, "val")) == len(index_split(root, "Val_Folder")) == 3
    with pytest.raises(LGAError, match="unknown split"):
        index_split(root, "Holdout")
    with pytest.raises(LGAError, match="Train_Folder"):
        index_split(root, "Train")


def test_mask_without_image_names_the_file_or_is_skipped(tmp_path):
    root = make_lvit(tmp_path)
    (root / "Train_Folder" / "img" / "case_1.png").unlink()
    with pytest.raises(LGAError, match=r"mask_case_1\.png.*mask without an image.*--skip-bad"):
        index_split(root, "Train")
    index = index_split(root, "Train", skip_bad=True)
    assert len(index) == 2 and len(index.skipped) == 1
    assert "mask_case_1.png" in next(iter(index.skipped))


def test_image_without_text_names_the_file_or_is_skipped(tmp_path):
    root = make_lvit(tmp_path)
    csv = root / "Train_Folder" / "Train_text.csv"
    csv.write_text("\n".join(csv.read_text().splitlines()[:-1]) + "\n")  # drop case_2's row
    with pytest.raises(LGAError, match=r"case_2\.png.*without text"):
        index_split(root, "Train")
    index = index_split(root, "Train", skip_bad=True)
    assert [s.name for s in index.samples] == ["case_0", "case_1"]
    assert list(index.skipped.values()) == ["image without text in the Train_text table"]


def test_unreadable_image_names_the_file_or_is_skipped(tmp_path):
    root = make_lvit(tmp_path)
    (root / "Train_Folder" / "img" / "case_0.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(LGAError, match=r"case_0\.png.*not a readable image"):
        index_split(root, "Train")
    assert len(index_split(root, "Train", skip_bad=True).skipped) == 1


def test_missing_or_malformed_text_table_is_a_clear_error(tmp_path):
    root = make_lvit(tmp_path)
    csv = root / "Train_Folder" / "Train_text.csv"
    csv.write_text("Name,Report\na,b\n")
    with pytest.raises(LGAError, match="columns Image and Description"):
        index_split(root, "Train")
    csv.unlink()
    with pytest.raises(LGAError, match="no text table"):
        index_split(root, "Train")


def test_dataset_items_have_model_sizes_and_augmentation_is_reproducible(tmp_path):
    root = make_lvit(tmp_path)
    config = get_preset("tiny")
    samples = index_split(root, "Train").samples
    plain = SegmentationDataset(samples, config)[1]
    assert plain["pixels"].shape == (3, config.image_size, config.image_size)
    assert plain["mask"].shape == (1, config.mask_size, config.mask_size)
    assert set(plain["mask"].unique().tolist()) == {0.0, 1.0}
    a = SegmentationDataset(samples, config, train=True, seed=3)
    b = SegmentationDataset(samples, config, train=True, seed=3)
    assert torch.equal(a[1]["pixels"], b[1]["pixels"]) and torch.equal(a[1]["mask"], b[1]["mask"])
    b.set_epoch(1)
    assert not torch.equal(a[1]["pixels"], b[1]["pixels"])


def test_augmentation_moves_image_and_mask_together():
    """An image that IS its mask (x255) must still match the mask after the geometric warp."""
    mask = torch.zeros(1, 64, 64)
    mask[:, 10:40, 20:50] = 1.0
    image = mask.repeat(3, 1, 1) * 255.0
    geometric_only = AugmentConfig(brightness=0.0, contrast=(1.0, 1.0))
    for seed in range(5):
        out_image, out_mask = augment(image, mask, torch.Generator().manual_seed(seed), geometric_only)
        assert out_mask.sum() > 0
        agree = ((out_image[0] > 127.5) == (out_mask[0] > 0.5)).float().mean()
        assert agree > 0.97, f"seed {seed}: image and mask disagree on {1 - agree:.1%} of pixels"


def test_input_noise_stays_within_its_level_and_keeps_clean_images_possible():
    """--input-noise 2: every pixel moves by at most 2 grey levels, the level is drawn per image (some
    images get far less), the result stays in 0..255, and 0 changes nothing."""
    from lga_export.data.augment import pixel_noise

    image = torch.full((3, 32, 32), 128.0)
    image[:, :4] = 255.0
    levels = []
    for seed in range(20):
        noisy = pixel_noise(image, torch.Generator().manual_seed(seed), 2.0)
        moved = (noisy - image).abs()
        assert moved.max() <= 2.0 and noisy.max() <= 255.0 and noisy.min() >= 0.0
        levels.append(float(moved[:, 4:].max()))
    assert min(levels) < 1.0 < max(levels)  # the level varies from image to image
    assert torch.equal(pixel_noise(image, torch.Generator().manual_seed(0), 0.0), image)
    mask = torch.zeros(1, 32, 32)
    mask[:, 5:9] = 1.0
    noisy, same_mask = augment(image, mask, torch.Generator().manual_seed(1), AugmentConfig(paper=False, noise=2.0))
    assert torch.equal(same_mask, mask) and not torch.equal(noisy, image) and (noisy - image).abs().max() <= 2.0


def test_real_qata_val_split(qata_root):
    index = index_split(qata_root, "Val")
    assert len(index) == 400 and not index.skipped
    assert all(s.mask.name == f"mask_{s.image.name}" for s in index.samples)
    assert all(s.text for s in index.samples)


def test_real_monuseg_xlsx():
    root = DATA_ROOT / "monuseg"
    if not (root / "Train_Folder").is_dir():
        pytest.skip(f"MoNuSeg sample data not found under {root}")
    index = index_split(root, "Train")
    assert len(index) > 0 and all(s.mask.name == s.image.name for s in index.samples)


def test_real_mosmed_text_table():
    path = DATA_ROOT / "mosmeddata-plus-text" / "Train_text.csv"
    if not path.is_file():
        pytest.skip(f"MosMedData+ text not found at {path}")
    texts = read_text_table(path)
    assert len(texts) == 2183
    assert texts["bjorke_1.png"].startswith("Bilateral pulmonary infection, two infected areas")
