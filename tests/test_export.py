"""ONNX export of the embedded trained model: parity with PyTorch on real or built-in images,
dynamic batch, FP16/INT8 safety, the manifest, and predict. Runs on a clean clone (no ../shared)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from lga_export.checkpoint import model_digest
from lga_export.cli.main import app
from lga_export.errors import ValidationFailed
from lga_export.export import validate as validate_module
from lga_export.export.exporter import export_onnx
from lga_export.contract import TOLERANCES, Tolerance, dummy_inputs, graph_specs
from lga_export.fileio import sha256_file
from lga_export.loading import embedded_checkpoint
from lga_export.runtime.registry import open_runner

runner = CliRunner()


@pytest.fixture(scope="module")
def export(tmp_path_factory, default_model, data_root):
    out = tmp_path_factory.mktemp("export") / "tiny"
    manifest = export_onnx(default_model, out, fp16=True, int8=True, validation_batch=3, data_root=data_root,
                           log=lambda _: None)
    return out, manifest


def test_export_matches_pytorch_with_real_masks(export, data_root):
    _, manifest = export
    report = manifest["validation"]
    assert report["passed"] and report["batch"] == 3
    assert report["source"].startswith("qata-cov19" if data_root else "built-in")
    for precision, result in report["results"].items():
        tol = TOLERANCES[precision]
        assert result["passed"], (precision, result["problems"])
        for part in ("lga_image", "end_to_end"):
            entry = result[part]
            assert min(entry["per_sample_dice"]) >= tol.min_dice
            assert entry["nonfinite"] == 0
            # the agreement means something only where the reference draws a mask
            assert min(entry["reference_foreground"]) > 0.001, (precision, part)
        assert result["text_encoder"]["nonfinite"] == 0
    fp32 = report["results"]["fp32"]
    assert fp32["lga_image"]["max_abs_diff"] <= 1e-4 and fp32["text_encoder"]["max_abs_diff"] <= 1e-4
    assert fp32["providers"]["lga_image"] == ["CPUExecutionProvider"]


def test_manifest_lists_every_file_with_its_digest_and_the_model(export, default_model):
    out, manifest = export
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["model_digest"] == model_digest(default_model)
    assert on_disk["opset"] >= 18 and on_disk["precisions"] == ["fp32", "fp16", "int8"]
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(on_disk["files"]) == files and "tokenizer/tokenizer.json" in files
    for name, digest in on_disk["files"].items():
        assert sha256_file(out / name) == digest
    assert on_disk["graphs"]["lga_image"]["int8"]["file"] == "lga_image.int8.onnx"
    assert on_disk["graphs"]["text_encoder"]["int8"]["file"] == "text_encoder.onnx"
    assert on_disk["io"]["lga_image"]["inputs"][0]["dynamic_axes"] == {"0": "batch"}
    assert on_disk["io"]["text_encoder"]["inputs"][0]["dynamic_axes"] == {"0": "batch", "1": "sequence"}
    assert not list(out.parent.glob(".*partial"))


def test_graphs_use_only_standard_operators_and_fp16_keeps_sensitive_ops_in_fp32(export):
    out, _ = export
    for name in ("text_encoder.onnx", "lga_image.onnx", "text_encoder.fp16.onnx", "lga_image.fp16.onnx"):
        model = onnx.load(str(out / name))
        assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}, name
    half = onnx.shape_inference.infer_shapes(onnx.load(str(out / "lga_image.fp16.onnx")))
    types = {v.name: v.type.tensor_type.elem_type for v in list(half.graph.value_info) + list(half.graph.input)}
    types.update({i.name: i.data_type for i in half.graph.initializer})
    sensitive = [n for n in half.graph.node if n.op_type in ("LayerNormalization", "Softmax")]
    assert sensitive and all(types[n.input[0]] == onnx.TensorProto.FLOAT for n in sensitive)
    matmul_weights = [types.get(i) for n in half.graph.node if n.op_type in ("MatMul", "Gemm") for i in n.input]
    assert onnx.TensorProto.FLOAT16 in matmul_weights
    assert half.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


@pytest.mark.parametrize("batch", [1, 3])
def test_batch_dimension_is_really_dynamic(export, default_model, batch):
    out, manifest = export
    assert manifest["traced_sizes"]["batch"] == 2
    with open_runner("ort", out) as ort_runner, open_runner("torch", default_model) as reference:
        for spec, sizes in zip(graph_specs(default_model.config), ({"batch": batch, "sequence": 11}, {"batch": batch})):
            feeds = dummy_inputs(spec, sizes, seed=batch)
            got = ort_runner.infer(spec.name, feeds)[spec.output]
            want = reference.infer(spec.name, feeds)[spec.output]
            assert got.shape[0] == batch
            np.testing.assert_allclose(got, want, atol=1e-4)


def test_runner_refuses_feeds_outside_the_spec(export):
    out, _ = export
    with open_runner("ort", out) as ort_runner:
        spec = ort_runner.specs["lga_image"]
        good = dummy_inputs(spec, {"batch": 1})
        for change, message in [({"image": good["image"][:, :, :128]}, "needs"),
                                ({"image": good["image"].astype(np.float64)}, "dtype float64"),
                                ({"text_embedding": np.zeros((2, 1, spec.inputs[1].shape[2]), np.float32)}, "batch 2"),
                                ({"extra": good["image"]}, "do not match")]:
            with pytest.raises(Exception, match=message):
                ort_runner.infer("lga_image", {**good, **change})
        with pytest.raises(Exception, match="unknown graph"):
            ort_runner.infer("decoder", good)


def test_failed_validation_writes_nothing_and_exits_3(tmp_path, default_model, monkeypatch):
    monkeypatch.setattr(validate_module, "tolerance", lambda precision: Tolerance(atol=0.0, min_dice=1.0))
    out = tmp_path / "strict"
    with pytest.raises(ValidationFailed, match=r"fp32: text_encoder: max abs difference|lga_image: max abs"):
        export_onnx(default_model, out, validation_batch=3, log=lambda _: None)
    assert not out.exists() and not list(tmp_path.iterdir())
    result = runner.invoke(app, ["onnx", "--checkpoint", str(embedded_checkpoint("tiny")), "--out", str(out)])
    assert result.exit_code == 3, result.output
    assert not out.exists() and not list(tmp_path.iterdir())


def test_existing_output_needs_force(tmp_path):
    out = tmp_path / "exists"
    out.mkdir()
    result = runner.invoke(app, ["onnx", "--preset", "tiny", "--out", str(out), "--no-validate"])
    assert result.exit_code == 2 and "--force" in result.output


def test_predict_from_onnx_checkpoint_and_default_agree(export, image_folder, tmp_path):
    out_dir, _ = export
    images, table = image_folder
    from PIL import Image

    from lga_export.verify.metrics import dice

    masks = {}
    for name, args in (("onnx", ["--model", str(out_dir)]), ("torch", ["--model", str(embedded_checkpoint("tiny"))])):
        result = runner.invoke(app, ["predict", *args, "--images", str(images), "--text-file", str(table),
                                     "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        written = sorted((tmp_path / name).glob("*_mask.png"))
        assert len(written) == 3 and len(list((tmp_path / name).glob("*_overlay.png"))) == 3
        masks[name] = [np.asarray(Image.open(p)) > 0 for p in written]
    for source in sorted(images.iterdir()):
        mask = np.asarray(Image.open(tmp_path / "onnx" / f"{source.stem}_mask.png"))
        assert mask.shape == np.asarray(Image.open(source)).shape[:2] and set(np.unique(mask)) <= {0, 255}
    assert any(m.any() for m in masks["onnx"])  # real masks, not an agreement of empty ones
    assert all(dice(a, b) >= 0.999 for a, b in zip(masks["onnx"], masks["torch"]))
