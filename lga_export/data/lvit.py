"""Index one split of an LViT-layout dataset: pair every mask with its image and its report.

Layout: <root>/<Split>_Folder/{img,labelcol}/ and a text table <Split>_text.{xlsx,csv} (or one
at <root>/<Split>_text.*). Variants handled: QaTa's text keyed by the MASK name (`mask_<image>`),
MoNuSeg's masks named like their images and `.tif` test images, MosMedData+'s `;`-separated
table with a `text` column. The text is taken as written (typos included).

A broken sample (mask without image, image without text, unreadable file) is an LGAError that
names the file, unless `skip_bad=True`: then it is left out and counted, never silently.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from lga_export.errors import LGAError
from lga_export.imageio import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

SPLITS = ("Train", "Val", "Test")
_TEXT_COLUMNS = ("Description", "text", "Text", "description")
_MASK_PREFIX = "mask_"


@dataclass(frozen=True)
class Sample:
    """One training pair and its report."""

    name: str
    image: Path
    mask: Path
    text: str


@dataclass
class SplitIndex:
    """The usable samples of one split and what was skipped (file -> reason)."""

    split: str
    folder: Path
    samples: list[Sample]
    skipped: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.samples)


def split_folder(root: str | Path, split: str) -> Path:
    """<root>/<Split>_Folder, accepting `val`/`Val`/`Val_Folder`; LGAError when absent."""
    root = Path(root)
    name = split[:-7] if split.endswith("_Folder") else split
    name = name[:1].upper() + name[1:].lower()
    if name not in SPLITS:
        raise LGAError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    folder = root / f"{name}_Folder"
    if not folder.is_dir():
        found = sorted(p.name for p in root.glob("*_Folder")) if root.is_dir() else []
        raise LGAError(f"{folder}: no such split folder (found {found or 'nothing'} under {root}); "
                       f"expected the LViT layout <root>/{{Train,Val,Test}}_Folder/{{img,labelcol}}")
    return folder


def _find_text_table(folder: Path, split: str) -> Path:
    candidates = [folder / f"{split}_text{ext}" for ext in (".xlsx", ".csv")]
    candidates += [folder.parent / f"{split}_text{ext}" for ext in (".xlsx", ".csv")]
    for path in candidates:
        if path.is_file():
            return path
    raise LGAError(f"{folder}: no text table; expected {split}_text.xlsx or {split}_text.csv "
                   f"(columns Image, Description) in the split folder")


def _read_columns(path: Path) -> tuple[dict[str, list[str]], list[int]]:
    """(column name -> cells as strings, the file line each row starts on) of a .csv (`,` or `;`,
    read with the standard library, so the lean inference install needs no pandas; a quoted cell
    may span lines, as CSV defines) or an .xlsx (pandas + openpyxl)."""
    if path.suffix.lower() in (".xlsx", ".xls"):
        try:
            import pandas as pd
        except ImportError:
            raise LGAError(f"{path}: reading .xlsx needs pandas and openpyxl; pip install \"lga-export[export]\" "
                           f"or save the table as .csv") from None
        table = pd.read_excel(path, dtype=str, keep_default_na=False)
        return {str(c): [str(v) for v in table[c]] for c in table.columns}, [i + 2 for i in range(len(table))]
    import csv
    import io

    with open(path, encoding="utf-8-sig", newline="") as handle:
        text = handle.read()
    header = text.split("\n", 1)[0]
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=";" if header.count(";") > header.count(",") else ",")
    records, line = [], 1
    for row in reader:
        records.append((line, row))
        line = reader.line_num + 1
    if not records:
        return {}, []
    names = records[0][1]
    rows = [(start, row) for start, row in records[1:] if any(c.strip() for c in row)]
    return ({name: [row[i] if i < len(row) else "" for _, row in rows] for i, name in enumerate(names)},
            [start for start, _ in rows])


def read_text_table(path: str | Path) -> dict[str, str]:
    """{file name in the Image column: report} from an LViT .xlsx, .csv or `;`-separated .csv.

    Two rows that give one image different reports (the same name twice, or `mask_x.png` and
    `x.png`) are refused naming their lines: which one is meant is the user's choice, not ours."""
    path = Path(path)
    try:
        table, lines = _read_columns(path)
    except LGAError:
        raise
    except Exception as exc:  # csv/pandas/openpyxl raise many types for corrupt files
        raise LGAError(f"{path}: not a readable text table ({exc.__class__.__name__}: {exc})") from exc
    columns = {str(c).strip(): c for c in table}
    text_column = next((columns[c] for c in _TEXT_COLUMNS if c in columns), None)
    if "Image" not in columns or text_column is None:
        raise LGAError(f"{path}: needs the columns Image and Description (or text); found {list(columns)}")
    texts: dict[str, str] = {}
    line_of: dict[str, int] = {}
    for line, image, text in zip(lines, table[columns["Image"]], table[text_column]):
        image, text = str(image).strip(), str(text).strip()
        if not image:
            continue
        if image in texts and texts[image] != text:
            raise LGAError(f"{path}: lines {line_of[image]} and {line} give {image} two different reports; keep "
                           f"one row per image")
        texts.setdefault(image, text)
        line_of.setdefault(image, line)
    for key in texts:
        plain = key[len(_MASK_PREFIX):]
        if key.startswith(_MASK_PREFIX) and plain in texts and texts[plain] != texts[key]:
            (one, first), (other, second) = sorted([(line_of[key], key), (line_of[plain], plain)])
            raise LGAError(f"{path}: lines {one} ({first}) and {other} ({second}) give one image two different "
                           f"reports; keep one of the rows")
    return texts


def reports_by_image(path: str | Path) -> dict[str, str]:
    """{image file name: report}: QaTa tables key the report by the mask name `mask_<image>`."""
    return {key.removeprefix(_MASK_PREFIX): text for key, text in read_text_table(path).items()}


def _text_for(texts: dict[str, str], image_name: str, mask_name: str) -> str | None:
    """Tables key the text by the mask name (QaTa) or the image name (MoNuSeg, MosMed)."""
    for key in (mask_name, image_name, _MASK_PREFIX + image_name):
        if key in texts:
            return texts[key]
    stem = Path(image_name).stem
    for key, text in texts.items():  # e.g. table says .png while the test image is .tif
        if Path(key).stem in (stem, _MASK_PREFIX + stem):
            return text
    return None


def _image_for(images: dict[str, Path], mask: Path) -> Path | None:
    stem = mask.stem
    candidates = [stem[len(_MASK_PREFIX):], stem] if stem.startswith(_MASK_PREFIX) else [stem]
    for candidate in candidates:
        if candidate in images:
            return images[candidate]
    return None


def _header_size(path: Path) -> tuple[int, int] | None:
    """(width, height) as read_image returns it (EXIF orientation applied), from the header; None
    for DICOM or a file PIL cannot open (checked when read)."""
    from PIL import Image

    if path.suffix.lower() in (".dcm", ".dicom"):
        return None
    try:
        with Image.open(path) as image:
            width, height = image.size
            if image.format == "TIFF":  # Pillow reports a TIFF's size already turned by its orientation
                orientation = None
            elif image.format != "PNG":
                orientation = image.getexif().get(0x0112)
            elif image.info.get("exif"):  # from the header: a PNG's getexif() would decode its pixels
                exif = Image.Exif()
                exif.load(image.info["exif"])
                orientation = exif.get(0x0112)
            else:
                orientation = None
    except Exception:  # noqa: BLE001 - unreadable files are reported by _readable
        return None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _readable(path: Path, image_size: tuple[int, int] | None = None) -> str | None:
    """None when PIL can open `path` (and, for a mask, it has its image's `image_size`), else the reason."""
    from PIL import Image, UnidentifiedImageError

    if path.suffix.lower() in (".dcm", ".dicom"):
        return None  # checked when read (lga_export.imageio), which names the file
    try:
        with Image.open(path) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return f"not a readable image ({exc.__class__.__name__})"
    size = _header_size(path) if image_size is not None else None
    if size is not None and size != image_size:
        return (f"mask is {size[0]}x{size[1]} but its image is {image_size[0]}x{image_size[1]}; give the mask "
                f"at the image's size")
    return None


def index_split(root: str | Path, split: str = "Train", *, skip_bad: bool = False,
                check_files: bool = True) -> SplitIndex:
    """Every (image, mask, text) of a split, sorted by name; broken samples raise or are skipped.

    `check_files` opens each file header once so a corrupt PNG fails here, naming the file,
    not in the middle of an epoch.
    """
    from lga_export.tokenization import is_blank

    folder = split_folder(root, split)
    split_name = folder.name[: -len("_Folder")]
    img_dir, mask_dir = folder / "img", folder / "labelcol"
    for sub in (img_dir, mask_dir):
        if not sub.is_dir():
            raise LGAError(f"{sub}: missing; the LViT layout needs img/ and labelcol/ in {folder}")
    texts = read_text_table(_find_text_table(folder, split_name))
    images = {p.stem: p for p in sorted(img_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    masks = sorted(p for p in mask_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    samples: list[Sample] = []
    skipped: dict[str, str] = {}

    def bad(path: Path, reason: str) -> None:
        if not skip_bad:
            raise LGAError(f"{path}: {reason} (pass --skip-bad to leave such samples out)")
        skipped[str(path)] = reason

    for mask in masks:
        image = _image_for(images, mask)
        if image is None:
            bad(mask, f"mask without an image in {img_dir}")
            continue
        text = _text_for(texts, image.name, mask.name)
        if text is None:
            bad(image, f"image without text in the {split_name}_text table")
            continue
        if is_blank(text):
            bad(image, f"empty report for {image.name} in the {split_name}_text table (only whitespace or "
                       f"invisible characters); fill in its row")
            continue
        if check_files:
            reason = _readable(image)
            if reason:
                bad(image, reason)
                continue
            reason = _readable(mask, _header_size(image))
            if reason:
                bad(mask, reason)
                continue
        samples.append(Sample(name=image.stem, image=image, mask=mask, text=text))
    if skipped:
        log.warning("%s: skipped %d bad sample(s): %s", folder, len(skipped),
                    "; ".join(f"{k}: {v}" for k, v in list(skipped.items())[:5]))
    if not samples:
        raise LGAError(f"{folder}: no usable samples (masks in {mask_dir} paired with images and text)")
    return SplitIndex(split=split_name, folder=folder, samples=samples, skipped=skipped)
