"""One reader that turns any supported medical image file into the model's input.

``read_image`` returns an HxWx3 ``uint8`` RGB array by one rule, so training, validation,
every runtime backend and predict see the same pixels whatever the file format:

* **8-bit pictures** (Pillow modes 1, L, P, LA, PA, RGB, RGBA, RGBX, CMYK, YCbCr): converted to
  RGB by Pillow as usual; alpha is dropped (not composited). 16-bit RGB(A) PNG and TIFF files and
  16-bit gray+alpha PNGs belong here too: Pillow itself decodes them to 8 bits by keeping the high
  byte of each sample (``v >> 8``), which equals the full-range rule below within one gray level
  and exactly for a ``v8 * 257`` copy.
* **Integers with more than 8 bits** (modes I;16, I;16B, I;16L, I: 16-bit PNG, 12/16/32-bit
  TIFF): full-range rescaling ``round(v * 255 / (2**bits - 1))`` where ``bits`` is the
  container's bit depth: the BitsPerSample tag for TIFF (so a 12-bit TIFF uses 12), else 16 (PNG).
  A ``v8 * 257`` 16-bit copy of an 8-bit picture therefore reads back exactly as the 8-bit
  picture. A 12-bit picture stored unshifted in a 16-bit PNG (values 0..4095) comes out dark
  (0..16): PNG's sBIT chunk is not exposed by Pillow, so the container depth is all we know.
  Signed integer data (TIFF SampleFormat 2) and values outside ``0..2**bits - 1`` are min-max
  scaled as below.
* **Floats** (TIFF mode F): if every finite value lies in [0, 1], ``round(v * 255)``; otherwise
  min-max over the finite values, ``round((v - min) * 255 / (max - min))``. NaN/Inf pixels are
  set to the minimum finite value; an image with no finite value is refused.
* **DICOM** (``.dcm``/``.dicom`` or the ``DICM`` preamble; needs pydicom): ``apply_modality_lut``
  (Rescale Slope/Intercept or Modality LUT), then, if the file has a VOI LUT or Window
  Center/Width, ``apply_voi_lut`` (first view; a VOI LUT wins over a window) with its output
  range (the LUT's nominal bit depth, or the window's saturation limits) mapped linearly onto
  0..255; without either (or with one pydicom rejects), min-max over the image. MONOCHROME1
  is inverted afterwards (high values dark). RGB (and YBR, which pydicom converts to RGB) passes
  through, rescaled by BitsStored if above 8 bits. Multi-frame files are refused: the model takes
  one 2D picture and silently picking a slice of a volume would hide a choice the user must make.
* **Everywhere**: the EXIF Orientation tag is applied (``ImageOps.exif_transpose``) before any
  scaling; a constant image gives a constant result (0 after min-max); grayscale is repeated over
  the 3 channels; multi-page TIFFs are refused like multi-frame DICOM; images over ``max_pixels``
  are refused from the header, before any pixel is decoded.

``read_mask`` reads a mask the same way (same checks and orientation), takes the maximum over
the colour channels, and calls a pixel foreground when it is above half the container's full
scale (127 for 8-bit, 32767 for 16-bit, 0.5 for float), or above 0 when the mask's maximum is 1
(0/1 masks).

Anything that cannot be interpreted raises ``LGAError`` with one line naming the file, the
problem and the fix. This module imports only numpy and Pillow (pydicom lazily), never torch.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lga_export.errors import LGAError, one_line

IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom"})
DEFAULT_MAX_PIXELS = 100_000_000

_DICOM_SUFFIXES = (".dcm", ".dicom")
_EIGHT_BIT_MODES = frozenset({"1", "L", "P", "LA", "La", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"})
_HIGH_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
# What Pillow raises for damaged data while decoding (truncated streams, bad chunks, broken EXIF).
_DECODE_ERRORS = (OSError, ValueError, EOFError, SyntaxError)


def read_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """HxWx3 uint8 RGB by the module's rule; LGAError (one line) for anything it cannot interpret."""
    path = Path(path)
    _check_file(path)
    if _is_dicom(path):
        return _read_dicom(path, max_pixels)
    image, bits, signed = _load(path, max_pixels)
    if image.mode in _EIGHT_BIT_MODES:
        return np.asarray(image.convert("RGB"))
    if image.mode in _HIGH_BIT_MODES:
        gray = _int_to_uint8(np.asarray(image).astype(np.int64), bits, signed)
    elif image.mode == "F":
        gray = _float_to_uint8(np.asarray(image, dtype=np.float64), path)
    else:
        raise LGAError(f"{path}: unsupported pixel mode {image.mode!r}; save it as an 8/16-bit grayscale or RGB PNG")
    return np.repeat(gray[..., None], 3, axis=2)


def read_mask(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """HxW bool mask (0/255, 0/1, 16-bit or coloured PNG/TIFF); same checks and errors as read_image."""
    path = Path(path)
    _check_file(path)
    if _is_dicom(path):
        raise LGAError(f"{path}: DICOM masks are not supported; give the mask as a 0/255 PNG")
    image, bits, _ = _load(path, max_pixels)
    if image.mode in _EIGHT_BIT_MODES:
        values, full = np.asarray(image.convert("RGB")).max(axis=2), 255.0
    elif image.mode in _HIGH_BIT_MODES:
        values, full = np.asarray(image).astype(np.int64), float(2**bits - 1)
    elif image.mode == "F":
        return np.nan_to_num(np.asarray(image, dtype=np.float64)) > 0.5
    else:
        raise LGAError(f"{path}: unsupported mask pixel mode {image.mode!r}; save the mask as a 0/255 PNG")
    # 0/1 masks are common (numpy dumps); otherwise half scale, so JPEG noise around 0/255 doesn't count.
    return values > (0 if values.max() == 1 else full // 2)


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise LGAError(f"{path}: no such file; check the path")
    if path.stat().st_size == 0:
        raise LGAError(f"{path}: the file is empty (0 bytes); re-export or re-download it")


def _is_dicom(path: Path) -> bool:
    """By suffix or by the 'DICM' magic after the 128-byte preamble (DICOM files often have no suffix)."""
    if path.suffix.lower() in _DICOM_SUFFIXES:
        return True
    with path.open("rb") as handle:
        return handle.read(132)[128:] == b"DICM"


def _check_size(path: Path, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise LGAError(
            f"{path}: {width}x{height} image ({width * height:,} pixels) is over the {max_pixels:,}-pixel limit; "
            "downscale or crop it (or raise max_pixels)"
        )


def _load(path: Path, max_pixels: int) -> tuple[Image.Image, int, bool]:
    """Open, size-check from the header, decode and orient one picture.

    Also returns the container bit depth and signedness that the >8-bit integer rule needs (they
    live in TIFF tags that exif_transpose's copy no longer carries). Pillow's own decompression-bomb
    warning is silenced because max_pixels is the check; its hard error (over twice
    Image.MAX_IMAGE_PIXELS) is turned into the same one-line refusal.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # A file object, not the path: Pillow (13.0) memory-maps uncompressed TIFFs opened by
            # name using the already-transposed size, which garbles EXIF orientations 5-8.
            with path.open("rb") as handle, Image.open(handle) as image:
                _check_size(path, image.width, image.height, max_pixels)
                bits, signed = 16, False
                if image.format == "TIFF":
                    pages = getattr(image, "n_frames", 1)
                    if pages > 1:
                        raise LGAError(f"{path}: TIFF holds {pages} pages; save the page to segment as its own file")
                    bits = int(np.ravel(image.tag_v2.get(258, 16))[0])
                    signed = int(np.ravel(image.tag_v2.get(339, 1))[0]) == 2
                image.load()
                return ImageOps.exif_transpose(image), bits, signed
    except Image.DecompressionBombError as exc:
        raise LGAError(
            f"{path}: image too large to decode safely ({one_line(exc, 200)}); "
            f"downscale or crop it below {max_pixels:,} pixels"
        ) from exc
    except UnidentifiedImageError as exc:
        raise LGAError(
            f"{path}: not an image file Pillow can read; give a PNG, JPEG, TIFF, BMP or DICOM (.dcm) file"
        ) from exc
    except _DECODE_ERRORS as exc:
        reason = one_line(exc, 200)
        raise LGAError(f"{path}: damaged or truncated image data ({reason}); re-export or re-download it") from exc


def _min_max(values: np.ndarray) -> np.ndarray:
    """Stretch [min, max] to 0..255; a constant image gives 0."""
    low, high = float(values.min()), float(values.max())
    if high == low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.rint((values - low) * (255.0 / (high - low))).astype(np.uint8)


def _finite(values: np.ndarray, path: Path) -> np.ndarray:
    """NaN/Inf -> the minimum finite value (they carry no intensity); refuse when nothing is finite."""
    finite = np.isfinite(values)
    if not finite.any():
        raise LGAError(f"{path}: no finite pixel value (all NaN/Inf); re-export the image")
    return values if finite.all() else np.where(finite, values, values[finite].min())


def _float_to_uint8(values: np.ndarray, path: Path) -> np.ndarray:
    values = _finite(values, path)
    if values.min() >= 0.0 and values.max() <= 1.0:
        return np.rint(values * 255.0).astype(np.uint8)
    return _min_max(values)


def _int_to_uint8(values: np.ndarray, bits: int, signed: bool) -> np.ndarray:
    full = 2**bits - 1
    if signed or values.size == 0 or values.min() < 0 or values.max() > full:
        return _min_max(values)
    # Multiply before dividing so v8 * 257 maps back to v8 exactly.
    return np.rint(values * 255.0 / full).astype(np.uint8)


def _read_dicom(path: Path, max_pixels: int) -> np.ndarray:
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError as exc:
        raise LGAError(f"{path}: reading DICOM needs pydicom, which is not installed; pip install pydicom") from exc
    try:
        with warnings.catch_warnings():  # force-parsing non-DICOM bytes warns per odd element
            warnings.simplefilter("ignore", UserWarning)
            ds = pydicom.dcmread(path, force=True)  # force: .dcm files without the 128-byte preamble exist
    except Exception as exc:  # pydicom raises many types (InvalidDicomError, struct.error, ...) for bad files
        raise LGAError(f"{path}: not a readable DICOM file ({one_line(exc, 200)}); re-export it") from exc
    if not any(key in ds for key in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        if "SOPClassUID" not in ds and "Rows" not in ds:
            raise LGAError(f"{path}: not a DICOM file (no DICOM elements found); give a PNG, JPEG, TIFF or DICOM file")
        raise LGAError(f"{path}: DICOM file has no pixel data (a report or structure set?); give an image file")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise LGAError(f"{path}: DICOM holds {frames} frames; export the frame to segment as a single-frame file")
    _check_size(path, int(ds.get("Columns", 0)), int(ds.get("Rows", 0)), max_pixels)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422"):
        raise LGAError(
            f"{path}: unsupported DICOM PhotometricInterpretation {photometric!r}; convert it to MONOCHROME2 or RGB"
        )
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # missing decoder (NotImplementedError, RuntimeError) or broken data (ValueError)
        raise LGAError(
            f"{path}: cannot decode the DICOM pixel data ({one_line(exc, 200)}); "
            "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg, or decompress it (gdcmconv --raw)"
        ) from exc
    if pixels.ndim == 3:  # colour; pydicom has already converted YBR to RGB
        if pixels.dtype == np.uint8:
            return np.ascontiguousarray(pixels)
        return _int_to_uint8(pixels.astype(np.int64), int(ds.get("BitsStored", 16)), False)
    values = _finite(np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64), path)
    try:
        gray = _apply_voi(values, ds, apply_voi_lut)
    except (ValueError, NotImplementedError):  # a VOI pydicom rejects (width < 1, odd LUT depth) counts as absent
        gray = None
    if gray is None:
        gray = _min_max(values)
    if photometric == "MONOCHROME1":
        gray = 255 - gray
    return np.repeat(gray[..., None], 3, axis=2)


def _apply_voi(values: np.ndarray, ds: Any, apply_voi_lut: Callable[..., np.ndarray]) -> np.ndarray | None:
    """The file's VOI LUT or window onto 0..255; None if it has neither.

    apply_voi_lut maps onto its own range, not 0..255: a VOI LUT onto 0..2**(bits per entry) - 1,
    a window onto limits pydicom derives from BitsStored and the rescale. A window saturates at
    those limits, so probing it with two extreme values finds them without copying pydicom's logic.
    """
    lut = ds.get("VOILUTSequence")
    has_lut = bool(lut) and None not in (lut[0].get("LUTDescriptor"), lut[0].get("LUTData"))
    has_window = None not in (ds.get("WindowCenter"), ds.get("WindowWidth"))
    if not (has_lut or has_window):
        return None
    if has_lut:
        low, high = 0.0, float(2 ** int(lut[0].LUTDescriptor[2]) - 1)
    else:
        with np.errstate(over="ignore"):  # the SIGMOID window's exp() saturates to inf by design
            low, high = (float(v) for v in apply_voi_lut(np.array([-1e30, 1e30]), ds))
    if high <= low:
        return None
    # A LUT is indexed by integer modality values; a window works on the floats as they are.
    mapped = np.asarray(apply_voi_lut(np.rint(values).astype(np.int64) if has_lut else values, ds), dtype=np.float64)
    return np.rint(np.clip((mapped - low) * (255.0 / (high - low)), 0, 255)).astype(np.uint8)
