"""Artefact identity: an export folder is verified (every file's sha256, paths inside the folder,
the model's digest) before anything is loaded, and refused with one line and exit 2 otherwise."""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest
import torch
from typer.testing import CliRunner

from lga_export.artifact import open_export
from lga_export.cli.bench import app as bench_app
from lga_export.cli.main import app
from lga_export.errors import LGAError

runner = CliRunner()


@pytest.fixture(scope="module")
def export(tmp_path_factory, copy_of_plain_export):
    return copy_of_plain_export(tmp_path_factory.mktemp("trusted") / "onnx")


@pytest.fixture()
def copy(export, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(export, target)
    return target


def _edit_manifest(folder, change):
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _predict(folder, image_folder, out):
    images, table = image_folder
    return runner.invoke(app, ["predict", "--model", str(folder), "--images", str(images), "--text-file", str(table),
                               "--out", str(out)])


def _tamper_weights(folder):
    path = folder / "lga_image.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _manifest_of_another_model(folder, tmp_path):
    from lga_export.export.exporter import export_onnx
    from lga_export.loading import load_model

    torch.manual_seed(1)
    other = tmp_path / "other"
    export_onnx(load_model("tiny"), other, validate=False, log=lambda _: None)
    shutil.copy(other / "manifest.json", folder / "manifest.json")


def _absolute_path(folder, tmp_path):
    outside = tmp_path / "elsewhere.onnx"
    shutil.copy(folder / "lga_image.onnx", outside)

    def change(manifest):
        manifest["graphs"]["lga_image"]["fp32"]["file"] = str(outside)
    _edit_manifest(folder, change)


def _dotdot_path(folder, tmp_path):
    shutil.copy(folder / "lga_image.onnx", tmp_path / "up.onnx")

    def change(manifest):
        manifest["graphs"]["lga_image"]["fp32"]["file"] = "../up.onnx"
        manifest["files"]["../up.onnx"] = manifest["files"]["lga_image.onnx"]
    _edit_manifest(folder, change)


def _symlink_out(folder, tmp_path):
    outside = tmp_path / "real.onnx"
    shutil.move(folder / "lga_image.onnx", outside)
    os.symlink(outside, folder / "lga_image.onnx")


@pytest.mark.parametrize("tamper, message", [
    (lambda f, t: _tamper_weights(f), "sha256 differs"),
    (_manifest_of_another_model, "sha256 differs"),
    (_absolute_path, "points outside"),
    (_dotdot_path, "points outside"),
    (_symlink_out, "points outside"),
    (lambda f, t: (f / "tokenizer" / "tokenizer.json").write_text("{}"), "tokenizer.json: sha256 differs"),
    (lambda f, t: (f / "text_encoder.onnx").unlink(), "missing"),
    (lambda f, t: (f / "manifest.json").write_text("{"), "not valid JSON"),
    (lambda f, t: _edit_manifest(f, lambda m: m.pop("files")), "lists no file digests"),
    (lambda f, t: _edit_manifest(f, lambda m: m.update(format="lga-export-onnx/1")), "format"),
])
def test_tampered_export_is_refused_by_predict_and_bench(copy, tmp_path, image_folder, tamper, message):
    tamper(copy, tmp_path)
    result = _predict(copy, image_folder, tmp_path / "pred")
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "pred").exists()
    bench = runner.invoke(bench_app, ["--onnx", str(copy), "--backends", "ort", "--precision", "fp32",
                                      "--out", str(tmp_path / "bench"), "--samples", "1", "--batch", "1",
                                      "--iters", "1", "--warmup", "0", "--matmul-size", "64"])
    assert bench.exit_code == 2 and message in bench.output, bench.output
    assert not (tmp_path / "bench").exists()


def test_export_of_another_model_is_refused_where_the_caller_holds_the_model(export, tmp_path):
    with pytest.raises(LGAError, match="belongs to another model"):
        open_export(export, model_digest="0" * 64)
    torch.manual_seed(3)
    from lga_export.checkpoint import save_lga_checkpoint
    from lga_export.loading import load_model

    other = save_lga_checkpoint(load_model("tiny"), tmp_path / "other.safetensors")
    result = runner.invoke(bench_app, ["--checkpoint", str(other), "--onnx", str(export), "--backends", "ort",
                                       "--precision", "fp32", "--out", str(tmp_path / "bench"), "--samples", "1",
                                       "--batch", "1", "--iters", "1", "--warmup", "0", "--matmul-size", "64"])
    assert result.exit_code == 2 and "belongs to another model" in result.output, result.output


def test_verification_is_quick_and_repeatable(export):
    start = time.perf_counter()
    artifact = open_export(export)
    assert time.perf_counter() - start < 30  # sanity bound only; the vit_b cost is measured in benchmarks/
    assert artifact.graph("lga_image", "fp32").name == "lga_image.onnx"
    with pytest.raises(LGAError, match="re-export with --fp16"):
        artifact.graph("lga_image", "fp16")
