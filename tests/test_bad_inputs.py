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
def world(tmp_path_factory, default_model, image_folder, copy_of_plain_export):
    """Shared inputs: an export folder, the default checkpoint, a SAM-layout .pth, good images."""
    from segment_anything.modeling import ImageEncoderViT  # noqa: F401 - SAM importable, as users expect

    from lga_export.checkpoint import save_lga_checkpoint
    root = tmp_path_factory.mktemp("world")
    copy_of_plain_export(root / "onnx")
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

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "DX"
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.WindowCenter, ds.WindowWidth = 32767.5, 65536
        ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _readonly_out(w, tmp):
    (tmp / "out").write_text("a file where the output folder should go")
    return ["predict", "--model", str(w["onnx"]), "--image", str(w["image"]), "--text", "x", "--out", str(tmp / "out")]


def _one_image_table(w, tmp, body: str) -> list[str]:
    """predict over a folder of one image, a.png, with the table `body` (after the header)."""
    folder = _folder(tmp, {"a.png": w["image"].read_bytes()})
    return _pred(w, tmp, "--images", str(folder), "--text-file", str(_file(tmp, "t.csv", "Image,Description\n" + body)))


def _out_in_images(w, tmp, sub: str | None) -> list[str]:
    folder = _folder(tmp, {"a.png": w["image"].read_bytes()})
    out = folder / sub if sub else folder
    return ["predict", "--model", str(w["onnx"]), "--images", str(folder), "--text-file",
            str(_table(tmp, {"a.png": "x"})), "--out", str(out)]


def _dangling_link(w, tmp) -> list[str]:
    folder = _folder(tmp, {"a.png": w["image"].read_bytes()})
    (folder / "b.png").symlink_to(tmp / "moved_away.png")
    return _pred(w, tmp, "--images", str(folder), "--text-file", str(_table(tmp, {"a.png": "x", "b.png": "y"})))


def _lvit(tmp: Path, mask_size: tuple[int, int] = (64, 48)) -> Path:
    """An LViT dataset (Train and Val, two samples each) whose images are 64x48; masks `mask_size`."""
    root = tmp / "data"
    for split in ("Train", "Val"):
        folder = root / f"{split}_Folder"
        (folder / "img").mkdir(parents=True)
        (folder / "labelcol").mkdir()
        for name in ("a.png", "b.png"):
            Image.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(folder / "img" / name)
            mask = np.zeros(mask_size[::-1], np.uint8)
            mask[4:12, 4:12] = 255
            Image.fromarray(mask).save(folder / "labelcol" / f"mask_{name}")
        (folder / f"{split}_text.csv").write_text("Image,Description\nmask_a.png,\"left lung\"\n"
                                                  "mask_b.png,\"right lung\"\n")
    return root


def _resume_state(w, tmp, change: Callable[[dict], None]) -> list[str]:
    """train --resume on a saved run whose state.pt is edited by `change` (model: the default checkpoint)."""
    from lga_export.checkpoint import load_lga_checkpoint

    model = load_lga_checkpoint(w["checkpoint"])
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params)
    for param in params:
        param.grad = torch.zeros_like(param)
    optimizer.step()
    state = {"optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
             "progress": {"step": 1, "best_dice": -1.0, "best_step": -1, "history": [], "steps": [], "elapsed_s": 0.0}}
    change(state)
    last = tmp / "out" / "last"
    last.mkdir(parents=True)
    shutil.copy(w["checkpoint"], last / "model.safetensors")
    torch.save(state, last / "state.pt")
    return ["train", "--data", str(_lvit(tmp)), "--out", str(tmp / "out"), "--resume"]


def _other_groups(state: dict) -> None:
    state["optimizer"]["param_groups"][0]["params"] = state["optimizer"]["param_groups"][0]["params"][:3]


def _param_without_step(state: dict) -> None:
    del state["optimizer"]["state"][0]["step"]


def _progress_without_step(state: dict) -> None:
    del state["progress"]["step"]


CASES = [
    # predict: images and reports
    Case("missing image", "lga-export", lambda w, t: _pred(w, t, "--image", str(t / "absent.png"), "--text", "x"), 2, "no such"),
    Case("text named .png", "lga-export", lambda w, t: _pred(w, t, "--image", str(_file(t, "n.png", "notes")), "--text", "x"), 2, "n.png"),
    Case("truncated png", "lga-export", lambda w, t: _pred(w, t, "--image", str(_truncated_png(w, t)), "--text", "x"), 2, "cut.png"),
    Case("empty file", "lga-export", lambda w, t: _pred(w, t, "--image", str(_file(t, "e.png", b"")), "--text", "x"), 2, "e.png"),
    Case("14000x14000 image", "lga-export", lambda w, t: _pred(w, t, "--image", str(_huge_png(t)), "--text", "x"), 2, "huge.png"),
    Case("all-NaN float TIFF", "lga-export", lambda w, t: _pred(w, t, "--image", str(_nan_tiff(t)), "--text", "x"), 2, "nan.tif"),
    Case("DICOM without pixels", "lga-export", lambda w, t: _pred(w, t, "--image", str(_dicom(t / "report.dcm")), "--text", "x"), 2, "report.dcm"),
    Case("empty text", "lga-export", lambda w, t: _pred(w, t, "--image", str(w["image"]), "--text", "  "), 2, "empty text"),
    Case("image without text", "lga-export", lambda w, t: _pred(w, t, "--image", str(w["image"])), 2, "needs --text"),
    Case("image and images", "lga-export", lambda w, t: _pred(w, t, "--image", str(w["image"]), "--text", "x", "--images", str(w["images"]), "--text-file", str(w["table"])), 2, "not both"),
    Case("nothing to segment", "lga-export", lambda w, t: _pred(w, t), 2, "give --image"),
    Case("empty image folder", "lga-export", lambda w, t: _pred(w, t, "--images", str(_folder(t, {})), "--text-file", str(w["table"])), 2, "no images"),
    Case("images not a folder", "lga-export", lambda w, t: _pred(w, t, "--images", str(w["image"]), "--text-file", str(w["table"])), 2, "not a folder"),
    Case("missing text file", "lga-export", lambda w, t: _pred(w, t, "--images", str(w["images"]), "--text-file", str(t / "no.csv")), 2, "no such text file"),
    Case("report missing for an image", "lga-export", lambda w, t: _pred(w, t, "--images", str(w["images"]), "--text-file", str(_table(t, {"other.png": "x"}))), 2, "no report"),
    Case("empty report in the table", "lga-export", lambda w, t: _pred(w, t, "--images", str(_folder(t, {"a.png": w["image"].read_bytes()})), "--text-file", str(_table(t, {"a.png": " "}))), 2, "empty report"),
    Case("two images with one stem", "lga-export", _same_stem, 2, "two outputs"),
    Case("output exists", "lga-export", _existing_output, 2, "--force"),
    Case("output is a file", "lga-export", _readonly_out, 2, "is a file"),
    # predict: models and backends
    Case("model path missing", "lga-export", lambda w, t: ["predict", "--model", str(t / "nope.safetensors"), "--image", str(w["image"]), "--text", "x", "--out", str(t / "out")], 2, "no such file"),
    Case("model folder of nothing", "lga-export", lambda w, t: ["predict", "--model", str(_folder(t, {})), "--image", str(w["image"]), "--text", "x", "--out", str(t / "out")], 2, "neither an export folder"),
    Case("SAM .pth as the model", "lga-export", lambda w, t: _pred(w, t, "--image", str(w["image"]), "--text", "x", model="sam"), 2, "not an LGA checkpoint"),
    Case("random bytes as the model", "lga-export", lambda w, t: ["predict", "--model", str(_file(t, "r.safetensors", b"\x00" * 64)), "--image", str(w["image"]), "--text", "x", "--out", str(t / "out")], 2, "r.safetensors"),
    Case("unknown backend", "lga-export", lambda w, t: _pred(w, t, "--image", str(w["image"]), "--text", "x", "--backend", "tflite"), 2, "unknown backend"),
    Case("ort on a checkpoint", "lga-export", lambda w, t: _pred(w, t, "--image", str(w["image"]), "--text", "x", "--backend", "ort", model="checkpoint"), 2, "export folder"),
    Case("int8 not exported", "lga-export", lambda w, t: _pred(w, t, "--image", str(w["image"]), "--text", "x", "--precision", "int8"), 2, "--int8"),
    Case("unknown precision", "lga-export", lambda w, t: _pred(w, t, "--image", str(w["image"]), "--text", "x", "--precision", "fp8"), 2, "fp8"),
    Case("cuda without a GPU", "lga-export", lambda w, t: _pred(w, t, "--image", str(w["image"]), "--text", "x", "--device", "cuda", model="checkpoint"), 2, "CUDA"),
    Case("NaN weights", "lga-export", lambda w, t: _pred(w, t, "--image", str(w["image"]), "--text", "x", model="nan"), 3, "NaN/Inf"),
    Case("edited model config", "lga-export", lambda w, t: ["predict", "--model", str(_bad_config(w, t, {"depth": "4"})), "--image", str(w["image"]), "--text", "x", "--out", str(t / "out")], 2, "depth"),
    Case("config without preset", "lga-export", lambda w, t: ["info", "--checkpoint", str(_bad_config(w, t, {"preset": None}))], 2, "preset"),
    # onnx
    Case("opset 99", "lga-export", lambda w, t: ["onnx", "--opset", "99", "--out", str(t / "out")], 2, "--opset 99"),
    Case("validation batch 0", "lga-export", lambda w, t: ["onnx", "--validation-batch", "0", "--out", str(t / "out")], 2, "--validation-batch"),
    Case("export data typo", "lga-export", lambda w, t: ["onnx", "--data", str(t / "typo"), "--out", str(t / "out")], 2, "no qata-cov19"),
    Case("export over a file", "lga-export", lambda w, t: ["onnx", "--out", str(_file(t, "out", "mine"))], 2, "is a file"),
    Case("unknown preset", "lga-export", lambda w, t: ["onnx", "--preset", "vit_q", "--out", str(t / "out")], 2, "unknown preset"),
    Case("preset and checkpoint", "lga-export", lambda w, t: ["onnx", "--preset", "tiny", "--checkpoint", str(w["checkpoint"]), "--out", str(t / "out")], 2, "not both"),
    Case("random bytes as SAM checkpoint", "lga-export", lambda w, t: ["onnx", "--preset", "tiny", "--sam-checkpoint", str(_file(t, "s.pth", b"\x13" * 64)), "--out", str(t / "out")], 2, "not a PyTorch checkpoint"),
    Case("safetensors as SAM checkpoint", "lga-export", lambda w, t: ["onnx", "--preset", "tiny", "--sam-checkpoint", str(w["checkpoint"]), "--out", str(t / "out")], 2, "safetensors file"),
    Case("SAM .pth as --checkpoint", "lga-export", lambda w, t: ["onnx", "--checkpoint", str(w["sam"]), "--out", str(t / "out")], 2, "--sam-checkpoint"),
    Case("SAM of another preset", "lga-export", lambda w, t: ["onnx", "--preset", "tiny", "--sam-checkpoint", str(w["sam"]), "--out", str(t / "out")], 2, "sam.pth"),
    # lga-bench
    Case("matmul size -1", "lga-bench", lambda w, t: ["--onnx", str(w["onnx"]), *BENCH_FAST[:-2], "--matmul-size", "-1", "--out", str(t / "out")], 2, "--matmul-size"),
    Case("batch 0", "lga-bench", lambda w, t: ["--onnx", str(w["onnx"]), "--batch", "0", "--out", str(t / "out")], 2, "--batch"),
    Case("samples 0", "lga-bench", lambda w, t: ["--onnx", str(w["onnx"]), "--samples", "0", "--out", str(t / "out")], 2, "--samples"),
    Case("threads 0", "lga-bench", lambda w, t: ["--onnx", str(w["onnx"]), "--threads", "0", "--out", str(t / "out")], 2, "--threads"),
    Case("unknown precision", "lga-bench", lambda w, t: ["--precision", "fp64", "--out", str(t / "out")], 2, "fp64"),
    Case("bench data typo", "lga-bench", lambda w, t: ["--data", str(t / "typo"), "--out", str(t / "out")], 2, "no qata-cov19"),
    Case("bench onnx typo", "lga-bench", lambda w, t: ["--onnx", str(t / "typo"), *BENCH_FAST, "--out", str(t / "out")], 2, "not an export folder"),
    Case("dice gate outside 0..1", "lga-bench", lambda w, t: ["--min-dice-agreement", "2", "--out", str(t / "out")], 2, "--min-dice-agreement"),
    # train / eval / trt / info
    Case("train data missing", "lga-export", lambda w, t: ["train", "--data", str(t / "none"), "--out", str(t / "out")], 2, "no such split folder"),
    Case("resume nothing", "lga-export", lambda w, t: ["train", "--data", str(t / "none"), "--out", str(t / "out"), "--resume"], 2, "none"),
    Case("resume and force", "lga-export", lambda w, t: ["train", "--data", str(t), "--out", str(t / "out"), "--resume", "--force"], 2, "not both"),
    Case("eval checkpoint missing", "lga-export", lambda w, t: ["eval", "--checkpoint", str(t / "no.safetensors"), "--data", str(t), "--out", str(t / "out")], 2, "no such"),
    Case("trt without TensorRT or GPU", "lga-export", lambda w, t: ["trt", "--onnx", str(w["onnx"]), "--out", str(t / "out")], 2, "TensorRT"),
    Case("info ffms 0", "lga-export", lambda w, t: ["info", "--num-ffms", "0"], 2, "num_ffms"),
    # input ambiguities (#21 item 3): each refused in one line naming the item
    Case("one image, two reports", "lga-export", lambda w, t: _one_image_table(w, t, 'a.png,"left lung"\na.png,"right lung"\n'), 2, "lines 2 and 3"),
    Case("rows for mask_a.png and a.png", "lga-export", lambda w, t: _one_image_table(w, t, 'mask_a.png,"left lung"\na.png,"right lung"\n'), 2, "lines 2 (mask_a.png) and 3 (a.png)"),
    Case("zero-width-only --text", "lga-export", lambda w, t: _pred(w, t, "--image", str(w["image"]), "--text", "\u200b\u200d\ufeff"), 2, "empty text"),
    Case("lone-accent --text", "lga-export", lambda w, t: _pred(w, t, "--image", str(w["image"]), "--text", "\u0301\u0301"), 2, "empty text"),
    Case("--text the tokenizer drops", "lga-export", lambda w, t: _pred(w, t, "--image", str(w["image"]), "--text", "\ufffd\ufffd"), 2, "empty text"),
    Case("NUL and zero-width report in the table", "lga-export", lambda w, t: _one_image_table(w, t, 'a.png,"\x00\u200b\x00"\n'), 2, "empty report"),
    Case("--out is the --images folder", "lga-export", lambda w, t: _out_in_images(w, t, None), 2, "is the --images folder"),
    Case("--out inside the --images folder", "lga-export", lambda w, t: _out_in_images(w, t, "masks"), 2, "is inside the --images folder"),
    Case("dangling symlink with a report row", "lga-export", _dangling_link, 2, "b.png: a symbolic link to a missing file"),
    # training and evaluation data (#21 item 4)
    Case("eval mask of another size", "lga-export", lambda w, t: ["eval", "--checkpoint", str(w["checkpoint"]), "--data", str(_lvit(t, (32, 32))), "--out", str(t / "out")], 2, "mask_a.png: mask is 32x32 but its image is 64x48"),
    Case("train mask of another size", "lga-export", lambda w, t: ["train", "--preset", "tiny", "--data", str(_lvit(t, (32, 32))), "--out", str(t / "out"), "--max-steps", "1"], 2, "mask_a.png: mask is 32x32"),
    Case("resume state of other parameter groups", "lga-export", lambda w, t: _resume_state(w, t, _other_groups), 2, "state.pt: its optimizer has parameter groups"),
    Case("resume state, a parameter without step", "lga-export", lambda w, t: _resume_state(w, t, _param_without_step), 2, "state.pt: the optimizer state of parameter 0 lacks its step"),
    Case("resume state without step", "lga-export", lambda w, t: _resume_state(w, t, _progress_without_step), 2, "state.pt: the training state lacks step"),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c.command} {c.name}" for c in CASES])
def test_bad_input(case: Case, world: dict, tmp_path: Path) -> None:
    if case.name == "trt without TensorRT or GPU" and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    args = case.args(world, tmp_path)
    made = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = CliRunner().invoke(bench_app if case.command == "lga-bench" else app, args)
    assert result.exit_code == case.code, (args, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:" if case.code == 2 else "failed:"), lines
    assert case.message in lines[0], lines[0]
    assert "Traceback" not in result.stdout + result.stderr
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert after == made, f"left behind: {set(after) - set(made)}"  # nothing new, nothing half-written
    assert before == [] or before == made[: len(before)]


def test_at_least_forty_cases() -> None:
    assert len(CASES) >= 40


def test_one_line_keeps_any_message_to_one_bounded_line() -> None:
    """The one helper every error message goes through: a multi-line trace (OpenVINO's, a child's
    stderr) becomes one line, whole or its first or last line, cut at the limit; no text, the type."""
    from lga_export.errors import one_line

    trace = RuntimeError("Exception from src/core.cpp:42:\n  shape   mismatch [1,3]\n\nat frame 7\n")
    assert one_line(trace) == "Exception from src/core.cpp:42: shape mismatch [1,3] at frame 7"
    assert one_line(trace, lines="first") == "Exception from src/core.cpp:42:"
    assert one_line(trace, lines="last") == "at frame 7" and one_line(trace, 9) == "Exception"
    assert one_line(ValueError()) == "ValueError" and one_line(" \n ") == "" and one_line("", lines="last") == ""


def test_unforeseen_error_is_one_line_exit_1_and_debug_shows_it(monkeypatch, world, tmp_path) -> None:
    import lga_export.predict as predict_module

    def boom(*args, **kwargs):
        raise ZeroDivisionError("an unforeseen bug")

    monkeypatch.setattr(predict_module, "collect_jobs", boom)
    monkeypatch.setenv("LGA_DEBUG", "0")  # restored (unset) after the test, though --debug sets it
    args = ["predict", "--model", str(world["onnx"]), "--image", str(world["image"]), "--text", "x",
            "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and "internal error: ZeroDivisionError" in result.stderr
    assert "Traceback" not in result.stderr and "LGA_DEBUG" in result.stderr
    debug = CliRunner().invoke(app, ["--debug", *args])
    assert isinstance(debug.exception, ZeroDivisionError)


def test_sigterm_leaves_no_partial_export(tmp_path) -> None:
    """SIGTERM during `lga-export onnx` is handled like Ctrl-C: the staging folder is removed."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "export"
    # Started with SIGTERM blocked, as a parent process (or a library in it) may leave the mask:
    # the CLI must unblock it, or the signal would wait until the export had finished.
    process = subprocess.Popen([sys.executable, "-m", "lga_export.cli.main", "onnx", "--out", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM}))
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob(".export.*")):
        time.sleep(0.2)
    assert list(tmp_path.glob(".export.*")), "the export never started"
    time.sleep(2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == []


def test_sixteen_bit_and_dicom_copies_give_the_same_mask(world, tmp_path) -> None:
    """The same X-ray as 8-bit PNG, 16-bit PNG and 16-bit DICOM gives the same mask (Dice >= 0.98)."""
    from lga_export.verify.metrics import dice

    gray = np.asarray(Image.open(world["image"]).convert("L"))
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(gray).save(folder / "x8.png")
    Image.fromarray((gray.astype(np.uint16) * 257)).save(folder / "x16.png")
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


def test_a_quoted_multi_line_report_is_read_as_csv_defines_it(world, tmp_path) -> None:
    """A quoted report may span lines (RFC 4180): its line break is kept, so the model reads the
    words it separates (splitlines() ran before the CSV reader and glued them: "pulmonaryinfection")."""
    from lga_export.predict import collect_jobs
    from lga_export.tokenization import TextTokenizer

    folder = _folder(tmp_path, {"a.png": world["image"].read_bytes(), "b.png": world["image"].read_bytes()})
    for name, body in (("comma.csv", 'Image,Description\r\na.png,"Bilateral pulmonary\r\ninfection, two areas"\r\n'
                                      'b.png,"one area"\r\n'),
                       ("semicolon.csv", 'Image;text\na.png;"Bilateral pulmonary\ninfection; two areas"\nb.png;one area\n')):
        jobs = {path.name: text for path, text in collect_jobs(None, None, folder, _file(tmp_path, name, body))}
        assert set(jobs) == {"a.png", "b.png"} and jobs["b.png"] == "one area", jobs
        assert jobs["a.png"].split() == ["Bilateral", "pulmonary", "infection,", "two", "areas"] or \
            jobs["a.png"].split() == ["Bilateral", "pulmonary", "infection;", "two", "areas"], jobs
    tokenizer = TextTokenizer.from_folder(world["onnx"] / "tokenizer")
    read = tokenizer.encode([jobs["a.png"]], 64)["input_ids"]
    assert (read == tokenizer.encode(["Bilateral pulmonary infection; two areas"], 64)["input_ids"]).all()
