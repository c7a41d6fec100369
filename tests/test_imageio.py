"""lga_export.imageio: every supported file kind reads by the documented rule; bad files give one-line LGAErrors.

All inputs are built in tmp_path (numpy, Pillow, pydicom, or a few hand-written PNG/TIFF bytes
for what Pillow cannot write); the QaTa check at the end is an optional extra.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lga_export.errors import LGAError
from lga_export.imageio import IMAGE_SUFFIXES, read_image, read_mask

# An 8-bit "X-ray": a horizontal ramp through every gray level plus a bright disc.
_Y, _X = np.mgrid[0:48, 0:64]
GRAY8 = np.clip(_X * 4 + ((_Y - 24) ** 2 + (_X - 32) ** 2 < 100) * 40, 0, 255).astype(np.uint8)
GRAY8[0, :] = np.arange(64) * 4 + 3  # reaches 255
GRAY8[-1, :] = 0


def rgb_of(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)


def mode_of(path: Path) -> str:
    with Image.open(path) as image:
        return image.mode


def assert_one_line_error(path: Path, match: str, **kwargs) -> None:
    with pytest.raises(LGAError, match=match) as info:
        read_image(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message


# --- hand-written files Pillow cannot write -------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png16(path: Path, pixels: np.ndarray) -> None:
    """16-bit PNG, gray (HxW) or RGB (HxWx3)."""
    height, width = pixels.shape[:2]
    color = 2 if pixels.ndim == 3 else 0
    raw = b"".join(b"\0" + row.astype(">u2").tobytes() for row in pixels)
    header = struct.pack(">IIBBBBB", width, height, 16, color, 0, 0, 0)
    chunks = _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)


def write_png_header_only(path: Path, width: int, height: int) -> None:
    """A 1-bit PNG that declares width x height but holds (almost) no data: a cheap 'huge image'."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    chunks = _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)


def write_tiff(path: Path, data: bytes, width: int, height: int, bits: tuple[int, ...], photometric: int) -> None:
    """Minimal uncompressed little-endian single-strip TIFF (for 12-bit and 48-bit RGB samples)."""
    spp = len(bits)
    n_entries = 10
    ifd_offset = 8
    extra_offset = ifd_offset + 2 + 12 * n_entries + 4
    bits_bytes = struct.pack(f"<{spp}H", *bits)
    bits_value = struct.pack("<HH", bits[0], 0) if spp == 1 else struct.pack("<I", extra_offset)
    data_offset = extra_offset + (len(bits_bytes) if spp > 1 else 0)

    def entry(tag: int, kind: int, count: int, value: int | bytes) -> bytes:
        if isinstance(value, bytes):
            return struct.pack("<HHI", tag, kind, count) + value
        raw = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        return struct.pack("<HHI", tag, kind, count) + raw

    entries = [
        entry(256, 3, 1, width), entry(257, 3, 1, height), entry(258, 3, spp, bits_value), entry(259, 3, 1, 1),
        entry(262, 3, 1, photometric), entry(273, 4, 1, data_offset), entry(277, 3, 1, spp),
        entry(278, 3, 1, height), entry(279, 4, 1, len(data)), entry(284, 3, 1, 1),
    ]
    body = b"II*\0" + struct.pack("<I", ifd_offset) + struct.pack("<H", n_entries) + b"".join(entries) + b"\0\0\0\0"
    path.write_bytes(body + (bits_bytes if spp > 1 else b"") + data)


def pack12(values: np.ndarray) -> bytes:
    """12-bit samples, MSB first, rows padded to a byte (TIFF's packing)."""
    out = bytearray()
    for row in values.astype(np.uint16):
        row = np.concatenate([row, [0]]) if len(row) % 2 else row
        a, b = row[0::2], row[1::2]
        out += np.stack([a >> 4, ((a & 0xF) << 4) | (b >> 8), b & 0xFF], axis=1).astype(np.uint8).tobytes()
    return bytes(out)


def write_dicom(
    path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", preamble: bool = True, **attrs
) -> None:
    """An uncompressed single-frame DICOM (Explicit VR Little Endian) with the given extra attributes."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.PhotometricInterpretation = photometric
    ds.SamplesPerPixel = 3 if pixels.ndim == 3 else 1
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated = bits
    ds.BitsStored = attrs.pop("BitsStored", bits)
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(pixels.dtype.kind == "i")
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=preamble)


# --- the rule --------------------------------------------------------------------------------


def test_image_suffixes():
    assert {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom"} <= IMAGE_SUFFIXES


def test_8bit_gray_png_and_16bit_copies_read_identically(tmp_path):
    Image.fromarray(GRAY8).save(tmp_path / "g8.png")
    Image.fromarray(GRAY8.astype(np.uint16) * 257).save(tmp_path / "g16.png")  # Pillow mode "I;16"
    Image.fromarray(GRAY8.astype(np.uint16) * 257).save(tmp_path / "g16.tif")
    assert mode_of(tmp_path / "g16.png") == "I;16"
    expected = rgb_of(GRAY8)
    for name in ("g8.png", "g16.png", "g16.tif"):
        out = read_image(tmp_path / name)
        assert out.dtype == np.uint8 and out.shape == (48, 64, 3)
        np.testing.assert_array_equal(out, expected, err_msg=name)


def test_16bit_full_range_rule_on_arbitrary_values(tmp_path):
    values = np.array([[0, 1, 128, 129, 32767, 32768, 65534, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "v.png")
    np.testing.assert_array_equal(read_image(tmp_path / "v.png")[..., 0], np.rint(values * 255.0 / 65535))


def test_12bit_values_in_16bit_png_are_scaled_by_the_container(tmp_path):
    """Unshifted 12-bit data in a 16-bit PNG comes out dark (0..16); shifted (<<4) it fills the range."""
    v12 = np.linspace(0, 4095, 64).astype(np.uint16)[None, :].repeat(4, 0)
    Image.fromarray(v12).save(tmp_path / "raw12.png")
    Image.fromarray(v12 << 4).save(tmp_path / "shift12.png")
    raw = read_image(tmp_path / "raw12.png")[..., 0]
    assert raw.max() == 16 and raw.min() == 0
    np.testing.assert_array_equal(raw, np.rint(v12 * 255.0 / 65535))
    shifted = read_image(tmp_path / "shift12.png")[..., 0]
    assert np.abs(shifted.astype(int) - np.rint(v12 * 255.0 / 4095)).max() <= 1


def test_12bit_tiff_uses_its_bits_per_sample(tmp_path):
    v12 = ((GRAY8.astype(np.int64) * 4095 + 127) // 255).astype(np.uint16)
    write_tiff(tmp_path / "t12.tif", pack12(v12), 64, 48, (12,), photometric=1)
    out = read_image(tmp_path / "t12.tif")
    np.testing.assert_array_equal(out, rgb_of(np.rint(v12 * 255.0 / 4095).astype(np.uint8)))
    assert np.abs(out[..., 0].astype(int) - GRAY8).max() <= 1


def test_48bit_rgb_png_and_tiff_keep_the_high_byte(tmp_path):
    rgb8 = np.stack([GRAY8, 255 - GRAY8, GRAY8 // 2], axis=2)
    rgb16 = rgb8.astype(np.uint16) * 257
    write_png16(tmp_path / "rgb48.png", rgb16)
    write_tiff(tmp_path / "rgb48.tif", rgb16.astype("<u2").tobytes(), 64, 48, (16, 16, 16), photometric=2)
    for name in ("rgb48.png", "rgb48.tif"):
        np.testing.assert_array_equal(read_image(tmp_path / name), rgb8, err_msg=name)
    odd = np.array([[[128, 383, 65535]]], dtype=np.uint16)  # high byte, within 1 of the full-range rule
    write_png16(tmp_path / "odd.png", odd)
    out = read_image(tmp_path / "odd.png")
    np.testing.assert_array_equal(out, odd >> 8)
    assert np.abs(out.astype(int) - np.rint(odd * 255.0 / 65535)).max() <= 1


def test_float_tiffs_unit_range_and_hu_range(tmp_path):
    Image.fromarray(GRAY8.astype(np.float32) / 255).save(tmp_path / "unit.tif")
    Image.fromarray(GRAY8.astype(np.float32) * 4 - 1024).save(tmp_path / "hu.tif")
    assert mode_of(tmp_path / "hu.tif") == "F"
    for name in ("unit.tif", "hu.tif"):
        out = read_image(tmp_path / name)
        assert out.max() == 255
        assert np.abs(out.astype(int) - rgb_of(GRAY8)).max() <= 1, name


def test_float_nan_pixels_take_the_minimum(tmp_path):
    values = GRAY8.astype(np.float32) * 4 - 1024
    values[5, 5], values[6, 6] = np.nan, np.inf
    Image.fromarray(values).save(tmp_path / "nan.tif")
    out = read_image(tmp_path / "nan.tif")[..., 0]
    assert out[5, 5] == 0 and out[6, 6] == 0 and out.max() == 255


def test_signed_int32_tiff_is_min_max_scaled(tmp_path):
    Image.fromarray(GRAY8.astype(np.int32) * 4 - 1024).save(tmp_path / "i32.tif")  # Pillow mode "I", signed
    assert mode_of(tmp_path / "i32.tif") == "I"
    np.testing.assert_array_equal(read_image(tmp_path / "i32.tif"), rgb_of(GRAY8))


def test_rgb_rgba_palette_and_constant(tmp_path):
    rgb = np.stack([GRAY8, 255 - GRAY8, GRAY8 // 2], axis=2)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(np.dstack([rgb, np.full_like(GRAY8, 7)])).save(tmp_path / "rgba.png")
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(tmp_path / "p.png")
    Image.new("L", (9, 5), 77).save(tmp_path / "const.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.png"), rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), rgb)  # alpha dropped, not composited
    palette = read_image(tmp_path / "p.png")
    assert palette.shape == (48, 64, 3) and np.abs(palette.astype(int) - rgb).mean() < 20
    np.testing.assert_array_equal(read_image(tmp_path / "const.png"), np.full((5, 9, 3), 77, np.uint8))


@pytest.mark.parametrize("name", ["rot.jpg", "rot.png", "rot.tif", "rot_lzw.tif", "rot16.tif", "rot16.png"])
def test_exif_orientation_is_applied(tmp_path, name):
    """Orientation 6 ("rotate 90 CW to display"); TIFFs raw and compressed, 8 and 16 bits."""
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / name
    source = GRAY8.astype(np.uint16) * 257 if "16" in name else GRAY8
    extra = {"compression": "tiff_lzw"} if "lzw" in name else {}
    Image.fromarray(source).save(path, exif=exif, **extra)
    out = read_image(path)
    assert out.shape == (64, 48, 3)
    error = np.abs(out[..., 0].astype(int) - np.rot90(GRAY8, k=-1))
    assert error.mean() < 3 if name.endswith(".jpg") else error.max() == 0


# --- DICOM -----------------------------------------------------------------------------------


def _ct_stored() -> np.ndarray:
    """Stored values of a 12-bit CT slice: HU = stored - 1024, from -1024 (air) up to ~2000."""
    hu = np.linspace(-1024, 2000, 48 * 64).reshape(48, 64)
    return (hu + 1024).astype(np.uint16)


def test_dicom_window_after_rescale(tmp_path):
    stored = _ct_stored()
    path = tmp_path / "ct.dcm"
    write_dicom(path, stored, BitsStored=12, RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=40, WindowWidth=400)
    out = read_image(path)
    hu = stored.astype(np.float64) - 1024
    # DICOM PS3.3 C.11.2.1.2 LINEAR window, written out independently of pydicom.
    expected = np.rint(np.clip((hu - 39.5) / 399 + 0.5, 0, 1) * 255)
    assert out.shape == (48, 64, 3)
    assert np.abs(out[..., 0].astype(int) - expected).max() <= 1
    gray = out[..., 0]
    assert (gray == 0).any() and (gray == 255).any() and ((gray > 0) & (gray < 255)).any()


def test_dicom_monochrome1_is_inverted(tmp_path):
    stored = _ct_stored()
    common = dict(BitsStored=12, RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=40, WindowWidth=400)
    write_dicom(tmp_path / "m2.dcm", stored, "MONOCHROME2", **common)
    write_dicom(tmp_path / "m1.dcm", stored, "MONOCHROME1", **common)
    m2, m1 = read_image(tmp_path / "m2.dcm"), read_image(tmp_path / "m1.dcm")
    np.testing.assert_array_equal(m1, 255 - m2)
    assert m1[0, 0, 0] == 255  # lowest value (air) displays white in MONOCHROME1


def test_dicom_without_window_is_min_max(tmp_path):
    stored = (GRAY8.astype(np.uint16) * 3 + 500)
    write_dicom(tmp_path / "plain.dcm", stored, BitsStored=12, RescaleSlope=2, RescaleIntercept=-100)
    np.testing.assert_array_equal(read_image(tmp_path / "plain.dcm"), rgb_of(GRAY8))


def test_dicom_voi_lut_sequence_wins_and_uses_its_bit_depth(tmp_path):
    from pydicom.dataset import Dataset

    stored = (np.linspace(0, 4095, 48 * 64).reshape(48, 64)).astype(np.uint16)
    lut = np.rint(np.sqrt(np.arange(4096) / 4095) * 65535).astype(np.uint16)
    item = Dataset()
    item.add_new(0x00283002, "US", [4096, 0, 16])  # LUTDescriptor: entries, first value mapped, bits
    item.add_new(0x00283006, "OW", lut.astype("<u2").tobytes())  # LUTData
    write_dicom(tmp_path / "lut.dcm", stored, BitsStored=12, VOILUTSequence=[item], WindowCenter=0, WindowWidth=2)
    out = read_image(tmp_path / "lut.dcm")[..., 0]
    np.testing.assert_array_equal(out, np.rint(lut[stored] * 255.0 / 65535))


def test_dicom_rgb_passes_through_and_magic_without_suffix(tmp_path):
    rgb = np.stack([GRAY8, 255 - GRAY8, GRAY8 // 2], axis=2)
    write_dicom(tmp_path / "colour.dcm", rgb, "RGB")
    np.testing.assert_array_equal(read_image(tmp_path / "colour.dcm"), rgb)
    write_dicom(tmp_path / "noext", GRAY8.astype(np.uint16) * 10)  # found by the DICM preamble
    np.testing.assert_array_equal(read_image(tmp_path / "noext"), rgb_of(GRAY8))


# --- masks -----------------------------------------------------------------------------------


def test_read_mask_variants(tmp_path):
    truth = GRAY8 > 128
    Image.fromarray(truth.astype(np.uint8) * 255).save(tmp_path / "m255.png")
    Image.fromarray(truth.astype(np.uint8)).save(tmp_path / "m01.png")
    Image.fromarray(truth.astype(np.uint16) * 65535).save(tmp_path / "m16.png")
    Image.fromarray(np.dstack([truth * 255, truth * 0, truth * 0]).astype(np.uint8)).save(tmp_path / "red.png")
    Image.fromarray(truth).save(tmp_path / "m1bit.png")
    for name in ("m255.png", "m01.png", "m16.png", "red.png", "m1bit.png"):
        mask = read_mask(tmp_path / name)
        assert mask.dtype == bool and mask.shape == truth.shape, name
        np.testing.assert_array_equal(mask, truth, err_msg=name)
    Image.new("L", (8, 8), 0).save(tmp_path / "empty.png")
    assert not read_mask(tmp_path / "empty.png").any()


def test_read_mask_errors_are_one_line(tmp_path):
    (tmp_path / "text.png").write_text("not a mask\n")
    with pytest.raises(LGAError, match="not an image file") as info:
        read_mask(tmp_path / "text.png")
    assert "\n" not in str(info.value)
    with pytest.raises(LGAError, match="no such file"):
        read_mask(tmp_path / "missing.png")


# --- bad inputs ------------------------------------------------------------------------------


def test_missing_empty_and_non_image_files(tmp_path):
    assert_one_line_error(tmp_path / "missing.png", "no such file")
    (tmp_path / "empty.png").write_bytes(b"")
    assert_one_line_error(tmp_path / "empty.png", "empty")
    (tmp_path / "notes.png").write_text("patient notes, not a picture\nsecond line\n")
    assert_one_line_error(tmp_path / "notes.png", "not an image file")


def test_truncated_png(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    assert_one_line_error(tmp_path / "cut.png", "damaged or truncated")


def test_huge_image_refused_from_the_header(tmp_path):
    write_png_header_only(tmp_path / "huge.png", 14000, 14000)  # over twice Pillow's own bomb limit
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_one_line_error(tmp_path / "huge.png", "too large|pixel limit")
        write_png_header_only(tmp_path / "big.png", 9500, 9500)  # over Pillow's warning limit, under ours
        assert_one_line_error(tmp_path / "big.png", "pixel limit", max_pixels=90_000_000)
    Image.new("L", (100, 100)).save(tmp_path / "small.png")
    assert_one_line_error(tmp_path / "small.png", "100x100 image .* over the 5,000-pixel limit", max_pixels=5000)


def test_all_nan_float_tiff(tmp_path):
    Image.fromarray(np.full((8, 8), np.nan, np.float32)).save(tmp_path / "nan.tif")
    assert_one_line_error(tmp_path / "nan.tif", "no finite pixel value")


def test_multi_page_tiff_refused(tmp_path):
    pages = [Image.fromarray(GRAY8), Image.fromarray(255 - GRAY8)]
    pages[0].save(tmp_path / "stack.tif", save_all=True, append_images=pages[1:])
    assert_one_line_error(tmp_path / "stack.tif", "2 pages")


def test_bad_dicoms(tmp_path):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import BasicTextSRStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = BasicTextSRStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    report = Dataset()
    report.file_meta = meta
    report.SOPClassUID = BasicTextSRStorage
    report.Modality = "SR"
    report.save_as(tmp_path / "report.dcm", enforce_file_format=True)
    assert_one_line_error(tmp_path / "report.dcm", "no pixel data")

    volume = np.zeros((2, 8, 8), np.uint16)
    write_dicom(tmp_path / "vol.dcm", volume[0], NumberOfFrames=2)
    assert_one_line_error(tmp_path / "vol.dcm", "2 frames")

    (tmp_path / "fake.dcm").write_text("not dicom at all\n")
    assert_one_line_error(tmp_path / "fake.dcm", "not a DICOM file")

    write_dicom(tmp_path / "big.dcm", np.zeros((100, 100), np.uint16))
    assert_one_line_error(tmp_path / "big.dcm", "100x100 image .* over the 5,000-pixel limit", max_pixels=5000)


def test_dicom_without_preamble_read_by_suffix(tmp_path):
    write_dicom(tmp_path / "bare.dcm", GRAY8.astype(np.uint16) * 10, preamble=False)
    assert (tmp_path / "bare.dcm").read_bytes()[128:132] != b"DICM"
    np.testing.assert_array_equal(read_image(tmp_path / "bare.dcm"), rgb_of(GRAY8))


def test_dicom_ybr_is_converted_to_rgb(tmp_path):
    from pydicom.pixels import convert_color_space

    rgb = np.stack([GRAY8, 255 - GRAY8, GRAY8 // 2], axis=2)
    write_dicom(tmp_path / "ybr.dcm", convert_color_space(rgb, "RGB", "YBR_FULL"), "YBR_FULL")
    assert np.abs(read_image(tmp_path / "ybr.dcm").astype(int) - rgb).max() <= 1


def test_dicom_without_pydicom_names_the_install(tmp_path, monkeypatch):
    write_dicom(tmp_path / "ct.dcm", GRAY8.astype(np.uint16))
    monkeypatch.setitem(sys.modules, "pydicom", None)  # makes "import pydicom" raise ImportError
    assert_one_line_error(tmp_path / "ct.dcm", "pip install pydicom")


def test_module_imports_neither_torch_nor_transformers():
    code = "import sys, lga_export.imageio; assert not {'torch', 'transformers'} & set(sys.modules), sys.modules.keys()"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- real data (optional) --------------------------------------------------------------------


def test_qata_images_and_masks_read_as_before(qata_root):
    images = sorted((qata_root / "Val_Folder" / "img").glob("*.png"))[:5]
    assert images
    for path in images:
        with Image.open(path) as image:
            expected = np.asarray(image.convert("RGB"))
        np.testing.assert_array_equal(read_image(path), expected)
        mask_path = qata_root / "Val_Folder" / "labelcol" / f"mask_{path.name}"
        if mask_path.is_file():
            with Image.open(mask_path) as image:
                gray = np.asarray(image.convert("L"))
            np.testing.assert_array_equal(read_mask(mask_path), gray > (127 if gray.max() > 1 else 0))
