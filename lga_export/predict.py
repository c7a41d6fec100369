"""`lga-export predict`: masks and overlays for images and their reports, on any backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from lga_export.errors import LGAError
from lga_export.fileio import atomic_file, refuse_overwrite
from lga_export.preprocess import load_rgb

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


def open_segmenter(model_ref: Path | None):
    """A Segmenter for an ONNX export folder, an LGA checkpoint, or the embedded default model."""
    from lga_export.runtime.pipeline import Segmenter

    if model_ref is not None and Path(model_ref).is_dir():
        from lga_export.export.consistency import check_export, check_tokenizer
        from lga_export.export.manifest import TOKENIZER_DIR, manifest_config, read_manifest
        from lga_export.modeling.text_encoder import load_tokenizer
        from lga_export.runtime.ort_runner import OnnxRuntimeRunner

        config = manifest_config(read_manifest(model_ref))
        check_export(Path(model_ref), config)
        runner = OnnxRuntimeRunner(model_ref)
        tokenizer = load_tokenizer(str(Path(model_ref) / TOKENIZER_DIR))
        check_tokenizer(Path(model_ref), tokenizer)
    else:
        from lga_export.loading import load_model
        from lga_export.modeling.text_encoder import load_tokenizer
        from lga_export.runtime.torch_runner import TorchRunner

        model = load_model(checkpoint=model_ref)
        config = model.config
        runner = TorchRunner(model)
        tokenizer = load_tokenizer(config.text_model)
    runner.activate()
    return Segmenter(runner, tokenizer, config)


def read_text_file(path: Path) -> dict[str, str]:
    """Image name -> report from an LViT text file (.csv with , or ;, or .xlsx)."""
    from lga_export.data.lvit import reports_by_image

    if not path.is_file():
        raise LGAError(f"{path}: no such text file")
    return reports_by_image(path)


def _jobs(image: Path | None, text: str | None, images: Path | None, text_file: Path | None) -> list[tuple[Path, str]]:
    if image is not None:
        if text is None:
            raise LGAError("--image needs --text with its report")
        return [(image, text)]
    if images is None or text_file is None:
        raise LGAError("give --image with --text, or --images with --text-file")
    if not images.is_dir():
        raise LGAError(f"{images}: not a folder of images")
    reports = read_text_file(text_file)
    files = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    missing = [p.name for p in files if p.name not in reports]
    if missing:
        raise LGAError(f"{text_file}: no report for {len(missing)} images, e.g. {missing[:3]}")
    return [(p, reports[p.name]) for p in files]


def overlay(rgb: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The image with the mask in translucent red and its outline in solid red."""
    out = rgb.astype(np.float32).copy()
    red = np.array([255.0, 40.0, 40.0])
    out[mask] = (1 - alpha) * out[mask] + alpha * red
    edge = mask & ~(np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1))
    out[edge] = red
    return out.clip(0, 255).astype(np.uint8)


def _save_png(array: np.ndarray, path: Path, force: bool) -> Path:
    with atomic_file(path, force=force) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
    return path


def predict_files(model_ref: Path | None, *, image: Path | None = None, text: str | None = None,
                  images: Path | None = None, text_file: Path | None = None, out: Path = Path("runs/predict"),
                  threshold: float = 0.0, force: bool = False, batch_size: int = 4) -> list[Path]:
    jobs = _jobs(image, text, images, text_file)
    for path, _ in jobs:  # fail before any work when an output would be overwritten
        refuse_overwrite(out / f"{path.stem}_mask.png", force)
    rgbs = [load_rgb(path) for path, _ in jobs]
    segmenter = open_segmenter(model_ref)
    written: list[Path] = []
    for start in range(0, len(jobs), batch_size):
        chunk = slice(start, start + batch_size)
        results = segmenter.segment(rgbs[chunk], [t for _, t in jobs[chunk]], threshold)
        for (path, _), rgb, result in zip(jobs[chunk], rgbs[chunk], results):
            written.append(_save_png(result.mask.astype(np.uint8) * 255, out / f"{path.stem}_mask.png", force))
            written.append(_save_png(overlay(rgb, result.mask), out / f"{path.stem}_overlay.png", force))
    return written
