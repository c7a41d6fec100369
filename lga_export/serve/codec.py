"""What the server and the Ray Data job share: bytes in, PNG bytes out, the model's identity.

Uploads are decoded by `lga_export.imageio.read_image` itself (written to a private temporary
file with the upload's suffix), so a served mask starts from exactly the pixels `predict` reads.
Masks and overlays are encoded by the same Pillow calls `predict` uses, so the bytes match too.
"""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lga_export.errors import LGAError, one_line
from lga_export.imageio import IMAGE_SUFFIXES, read_image


def decode_upload(data: bytes, filename: str | None, max_pixels: int) -> np.ndarray:
    """HxWx3 uint8 from an uploaded file's bytes, by `read_image`; LGAError (one line, naming the
    upload rather than the temporary file) for anything it cannot read."""
    name = Path(filename or "upload").name or "upload"
    if not data:
        raise LGAError(f"{name}: the uploaded image is empty (0 bytes)")
    suffix = Path(name).suffix.lower()
    with tempfile.TemporaryDirectory(prefix="lga-upload-") as folder:
        path = Path(folder) / f"upload{suffix if suffix in IMAGE_SUFFIXES else ''}"
        path.write_bytes(data)
        try:
            return read_image(path, max_pixels=max_pixels)
        except LGAError as exc:
            raise LGAError(str(exc).replace(str(path), name)) from None
        except (ValueError, TypeError, OverflowError, KeyError, IndexError, AttributeError) as exc:
            # a decoder tripping over a malformed header value (e.g. a DICOM NumberOfFrames of
            # "abc"): the upload's fault, so a 400 naming it, never a 500
            detail = one_line(str(exc).replace(str(path), name), 200) or type(exc).__name__
            raise LGAError(f"{name}: cannot read this image ({type(exc).__name__}: {detail}); "
                           f"check the file or re-export it") from None


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def mask_png(mask: np.ndarray) -> bytes:
    """The 0/255 mask PNG, byte for byte what `predict` writes as <name>_mask.png."""
    return png_bytes(mask.astype(np.uint8) * 255)


def model_identity(runner: Any, source: Any) -> dict[str, Any]:
    """Digest, backend, precision and config of an active runner's model.

    The digest is the one the runner's artefact records (or, for PyTorch, its model's).
    """
    digest = runner.model_digest
    describe = json.loads(json.dumps(runner.describe() or {}, default=str))
    return {
        "model": digest,
        "backend": runner.backend,
        "precision": runner.precision,
        "source": str(source) if source is not None else "embedded default model",
        "config": json.loads(runner.config.to_json()),
        "runner": describe,
    }
