"""Bad inputs and faults through the real CLI: every case ends with its exit code (2 bad input,
3 failed check), exactly one message line on stderr naming the problem, no traceback, and
nothing left behind in the output location."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from lga_export.cli.bench import app as bench_app
from lga_export.cli.main import app

BENCH_FAST = ["--samples", "1", "--batch", "1", "--warmup", "0", "--iters", "1", "--matmul-size", "64"]


@pytest.fixture(scope="module")
def world(tmp_path_factory, default_model, image_folder):
    """Shared inputs: an export folder, the default checkpoint, a SAM-layout .pth, good images."""
    from segment_anything.modeling import ImageEncoderViT  # noqa: F401 - SAM importable, as users expect

    from lga_export.checkpoint import save_lga_checkpoint
    from lga_export.export.exporter import export_onnx

    root = tmp_path_factory.mktemp("world")
    export_onnx(default_model, root / "onnx", validate=False, log=lambda _: None)
    checkpoint = save_lga_checkpoint(default_model, root / "model.safetensors")
    nan_model = save_lga_checkpoint(default_model, root / "nan.safetensors")
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    with safe_open(str(nan_model), framework="pt") as handle:
        meta = handle.metadata()
    state = load_file(str(nan_model))
    state["mask_decoder.output_upscaling.0.weight"] = torch.full_like(state["mask_decoder.output_upscaling.0.weight"],
                                                                      float("nan"))
    save_file(state, str(nan_model), metadata=meta)
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(1)}, root / "sam.pth")
    images, table = image_folder
    image = sorted(images.iterdir())[0]
    return {"root": root, "onnx": root / "onnx", "checkpoint": checkpoint, "nan": nan_model, "sam": root / "sam.pth",
            "image": image, "images": images, "table": table}


@dataclass(frozen=True)
class Case:
    name: str
    command: str  # "lga-export" or "lga-bench"
    args: Callable[[dict, Path], list[str]]
    code: int
    message: str


def _file(tmp: Path, name: str, data: bytes | str) -> Path:
    path = tmp / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def _huge_png(tmp: Path) -> Path:
    path = tmp / "huge.png"
    Image.new("1", (14000, 14000)).save(path)
    return path


def _nan_tiff(tmp: Path) -> Path:
    path = tmp / "nan.tif"
    Image.fromarray(np.full((32, 32), np.nan, dtype=np.float32), mode="F").save(path)
    return path


def _truncated_png(w: dict, tmp: Path) -> Path:
    data = w["image"].read_bytes()
    return _file(tmp, "cut.png", data[: len(data) // 2])


def _folder(tmp: Path, files: dict[str, bytes]) -> Path:
    folder = tmp / "imgs"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def _table(tmp: Path, rows: dict[str, str]) -> Path:
    return _file(tmp, "t.csv", "Image,Description\n" + "".join(f'{k},"{v}"\n' for k, v in rows.items()))


def _bad_config(w: dict, tmp: Path, change: dict) -> Path:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(w["checkpoint"]), framework="pt") as handle:
        meta = dict(handle.metadata())
    config = json.loads(meta["lga_config"])
    config.update(change)
    config = {k: v for k, v in config.items() if v is not None}
    meta["lga_config"] = json.dumps(config)
    path = tmp / "bad_config.safetensors"
    save_file(load_file(str(w["checkpoint"])), str(path), metadata=meta)
    return path


def _pred(w: dict, tmp: Path, *args: str, model: str | None = "onnx") -> list[str]:
    chosen = ["--model", str(w[model])] if model else []
    return ["predict", *chosen, *args, "--out", str(tmp / "out")]


def _same_stem(w, tmp):
    data = w["image"].read_bytes()
    folder = _folder(tmp, {"a.png": data, "a.jpg": _jpeg(w)})
    return _pred(w, tmp, "--images", str(folder), "--text-file", str(_table(tmp, {"a.png": "x", "a.jpg": "y"})))


def _jpeg(w) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.open(w["image"]).convert("RGB").save(buffer, format="JPEG")
    return buffer.getvalue()


def _existing_output(w, tmp):
    (tmp / "out").mkdir()
    (tmp / "out" / f"{w['image'].stem}_mask.png").write_bytes(b"mine")
    return _pred(w, tmp, "--image", str(w["image"]), "--text", "x")


def _dicom(path: Path, pixels: np.ndarray | None = None) -> Path:
    """A DICOM file: a 16-bit MONOCHROME2 X-ray of `pixels` (full-range window), or with no pixels."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    _dicom(folder / "x_dcm.dcm", gray.astype(np.uint16) * 257)
    text = "Bilateral pulmonary infection, two infected areas, all left lung and all right lung."
    table = _file(tmp_path, "t.csv", "Image,Description\n" + "".join(f'{p.name},"{text}"\n' for p in folder.iterdir()))
    result = CliRunner().invoke(app, ["predict", "--model", str(world["onnx"]), "--images", str(folder),
                                      "--text-file", str(table), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.stderr
    masks = {p.name: np.asarray(Image.open(p)) > 0 for p in (tmp_path / "out").glob("*_mask.png")}
    reference = masks["x8_mask.png"]
    assert reference.any()
    assert dice(masks["x16_mask.png"], reference) >= 0.98 and dice(masks["x_dcm_mask.png"], reference) >= 0.98
