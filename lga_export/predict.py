"""`lga-export predict`: masks and overlays for images and their reports, on any backend.

Everything is checked before the first inference (inputs, reports, output names, overwrites),
and the outputs are staged and published together: a failure leaves none of them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from lga_export.errors import LGAError, ValidationFailed
from lga_export.fileio import atomic_files
from lga_export.imageio import IMAGE_SUFFIXES, read_image


def read_text_file(path: Path) -> dict[str, str]:
    """Image name -> report from an LViT text file (.csv with , or ;, or .xlsx)."""
    from lga_export.data.lvit import reports_by_image

    if not path.is_file():
        raise LGAError(f"{path}: no such text file; give the LViT text table (.csv or .xlsx) of the images")
    return reports_by_image(path)


def collect_jobs(image: Path | None, text: str | None, images: Path | None,
                 text_file: Path | None) -> list[tuple[Path, str]]:
    """(image file, report) pairs, refused up front when a report is missing or empty."""
    from lga_export.tokenization import is_blank

    if image is not None:
        if images is not None or text_file is not None:
            raise LGAError("give --image with --text, or --images with --text-file, not both")
        if text is None:
            raise LGAError("--image needs --text with its report")
        if is_blank(text):
            raise LGAError(f"empty text for {image.name}: every image needs a report (one of only invisible "
                           f"characters - NUL, zero-width, control, lone accents - counts as empty)")
        return [(image, text)]
    if images is None or text_file is None:
        raise LGAError("give --image with --text, or --images with --text-file")
    if not images.is_dir():
        raise LGAError(f"{images}: not a folder of images")
    reports = read_text_file(text_file)
    files = image_files(images)
    missing = [p.name for p in files if p.name not in reports]
    if missing:
        raise LGAError(f"{text_file}: no report for {len(missing)} images, e.g. {missing[:3]}")
    empty = [p.name for p in files if is_blank(reports[p.name])]
    if empty:
        raise LGAError(f"{text_file}: empty report for {len(empty)} images, e.g. {empty[:3]} (only whitespace or "
                       f"invisible characters); fill in their rows")
    return [(p, reports[p.name]) for p in files]


def image_files(images: Path) -> list[Path]:
    """The image files of the folder, sorted; a symbolic link to nothing is refused, naming it,
    rather than skipped (the user listed an image there, and its mask would silently be missing)."""
    candidates = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    dangling = [p for p in candidates if p.is_symlink() and not p.exists()]
    if dangling:
        more = f" (and {len(dangling) - 1} more in {images})" if len(dangling) > 1 else ""
        raise LGAError(f"{dangling[0]}: a symbolic link to a missing file ({os.readlink(dangling[0])}){more}; "
                       f"restore the file or remove the link")
    files = [p for p in candidates if p.is_file()]
    if not files:
        raise LGAError(f"{images}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}); give the folder that holds them")
    return files


def check_out(out: Path, images: Path | None) -> None:
    """--out may not be the --images folder or inside it: the masks and overlays would be mixed with
    the inputs, and the next run on the folder would take them for images."""
    if images is None:
        return
    inputs, target = Path(images).resolve(), Path(out).resolve()
    if target == inputs or inputs in target.parents:
        where = "is" if target == inputs else "is inside"
        raise LGAError(f"--out {out} {where} the --images folder {images}; give an output folder outside the inputs")


def overlay(rgb: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The image with the mask in translucent red and its outline in solid red."""
    out = rgb.astype(np.float32).copy()
    red = np.array([255.0, 40.0, 40.0])
    out[mask] = (1 - alpha) * out[mask] + alpha * red
    edge = mask & ~(np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1))
    out[edge] = red
    return out.clip(0, 255).astype(np.uint8)


def output_names(path: Path) -> tuple[str, str]:
    return f"{path.stem}_mask.png", f"{path.stem}_overlay.png"


def predict_files(model_ref: Path | None, *, image: Path | None = None, text: str | None = None,
                  images: Path | None = None, text_file: Path | None = None, out: Path = Path("runs/predict"),
                  threshold: float = 0.0, force: bool = False, batch_size: int = 4, backend: str | None = None,
                  precision: str = "fp32", device: str | None = None, progress: bool = False,
                  self_check: str = "refuse") -> list[Path]:
    """Segment every (image, report) pair; returns the files written (mask, overlay per image).
    `self_check`: what a reduced precision's first run here does (`registry.open_runner`)."""
    from tqdm import tqdm

    from lga_export.runtime.pipeline import Segmenter
    from lga_export.runtime.registry import open_runner

    if batch_size < 1:
        raise LGAError(f"--batch-size must be at least 1, not {batch_size}")
    check_out(out, images)
    jobs = collect_jobs(image, text, images, text_file)
    names = [name for path, _ in jobs for name in output_names(path)]
    with atomic_files(out, names, force=force) as staged:
        rgbs = [read_image(path) for path, _ in jobs]  # every image readable before any inference
        with open_runner(backend, model_ref, precision, device, self_check=self_check) as runner:
            segmenter = Segmenter(runner)
            bar = tqdm(range(0, len(jobs), batch_size), desc="predict", unit="batch",
                       disable=None if progress else True)  # None: shown on a terminal only
            for start in bar:
                chunk = slice(start, start + batch_size)
                results = segmenter.segment(rgbs[chunk], [t for _, t in jobs[chunk]], threshold)
                bad = [path.name for (path, _), r in zip(jobs[chunk], results) if not np.isfinite(r.logits).all()]
                if bad:
                    raise ValidationFailed(f"the model produced NaN/Inf logits for {bad[:3]}; nothing was written - "
                                           f"check the checkpoint's weights (re-export or retrain it)")
                for (path, _), rgb, result in zip(jobs[chunk], rgbs[chunk], results):
                    mask_name, overlay_name = output_names(path)
                    Image.fromarray(result.mask.astype(np.uint8) * 255).save(staged[mask_name], format="PNG")
                    Image.fromarray(overlay(rgb, result.mask)).save(staged[overlay_name], format="PNG")
    return [out / name for name in names]
