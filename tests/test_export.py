"""ONNX export: both graphs validated against PyTorch on real images, dynamic batch, FP16 safety."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from lga_export.build import build_lga
from lga_export.checkpoint import save_lga_checkpoint
from lga_export.cli.main import app
from lga_export.config import get_preset
from lga_export.errors import ValidationFailed
from lga_export.export import validate as validate_module
from lga_export.export.exporter import export_onnx
from lga_export.export.specs import dummy_inputs, graph_specs
from lga_export.runtime.ort_runner import OnnxRuntimeRunner
from lga_export.runtime.torch_runner import TorchRunner

runner = CliRunner()


def _text_sensitive_tiny():
    torch.manual_seed(0)
    model = build_lga(get_preset("tiny"))
    with torch.no_grad():
        for ffm in model.ffms:
            ffm.image_update.gamma.normal_(std=0.5)
    return model


@pytest.fixture(scope="module")
def tiny_model():
    return _text_sensitive_tiny()


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory, tiny_model, qata_root):
    out = tmp_path_factory.mktemp("export") / "tiny"
    manifest = export_onnx(tiny_model, out, fp16=True, validation_batch=3, data_root=qata_root.parent,
                           log=lambda _: None)
    return out, manifest


def test_tiny_export_matches_pytorch_on_real_images(tiny_export):
    out, manifest = tiny_export
    report = manifest["validation"]
    assert report["passed"] and report["batch"] == 3 and report["source"].startswith("qata-cov19")
    fp32, fp16 = report["results"]["fp32"], report["results"]["fp16"]
    assert fp32["lga_image"]["max_abs_diff"] <= 1e-4
    assert fp32["text_encoder"]["max_abs_diff"] <= 1e-4
    assert min(fp32["lga_image"]["per_sample_dice"]) >= 0.999
    assert min(fp16["lga_image"]["per_sample_dice"]) >= 0.99
    assert min(fp16["end_to_end"]["per_sample_dice"]) >= 0.99
    assert fp16["lga_image"]["nonfinite"] == 0 and fp16["text_encoder"]["nonfinite"] == 0
    assert fp32["providers"]["lga_image"] == ["CPUExecutionProvider"]


def test_manifest_describes_every_file(tiny_export):
    out, manifest = tiny_export
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["opset"] >= 18 and on_disk["precisions"] == ["fp32", "fp16"]
    from lga_export.fileio import sha256_file

    for graph, entries in on_disk["graphs"].items():
        for precision, entry in entries.items():
            assert sha256_file(out / entry["file"]) == entry["sha256"]
    assert on_disk["io"]["lga_image"]["inputs"][0]["dynamic_axes"] == {"0": "batch"}
    assert on_disk["io"]["text_encoder"]["inputs"][0]["dynamic_axes"] == {"0": "batch", "1": "sequence"}
    assert (out / "tokenizer" / "tokenizer_config.json").is_file()
    assert on_disk["libraries"]["torch"].startswith("2.")


def test_graphs_use_only_standard_operators_and_fp16_keeps_sensitive_ops_in_fp32(tiny_export):
    out, _ = tiny_export
    for path in out.glob("*.onnx"):
        model = onnx.load(str(path))
        assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}, path.name
    half = onnx.shape_inference.infer_shapes(onnx.load(str(out / "lga_image.fp16.onnx")))
    types = {v.name: v.type.tensor_type.elem_type for v in list(half.graph.value_info) + list(half.graph.input)}
    types.update({i.name: i.data_type for i in half.graph.initializer})
    sensitive = [n for n in half.graph.node if n.op_type in ("LayerNormalization", "Softmax")]
    assert sensitive and all(types[n.input[0]] == onnx.TensorProto.FLOAT for n in sensitive)
    matmul_weights = [types.get(i) for n in half.graph.node if n.op_type in ("MatMul", "Gemm") for i in n.input]
    assert onnx.TensorProto.FLOAT16 in matmul_weights
    assert half.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


@pytest.mark.parametrize("batch", [1, 3])
def test_batch_dimension_is_really_dynamic(tiny_export, tiny_model, batch):
    out, manifest = tiny_export
    assert manifest["traced_sizes"]["batch"] == 2
    text_spec, image_spec = graph_specs(tiny_model.config)
    with OnnxRuntimeRunner(out) as ort_runner, TorchRunner(tiny_model) as reference:
        for spec, sizes in ((text_spec, {"batch": batch, "sequence": 11}), (image_spec, {"batch": batch})):
            feeds = dummy_inputs(spec, sizes, seed=batch)
            got = ort_runner.infer(spec.name, feeds)[spec.output_names[0]]
            want = reference.infer(spec.name, feeds)[spec.output_names[0]]
            assert got.shape[0] == batch
            np.testing.assert_allclose(got, want, atol=1e-4)


def test_failed_validation_writes_nothing_and_exits_3(tmp_path, tiny_model, monkeypatch):
    def strict_specs(config):
        specs = graph_specs(config)
        return tuple(type(s)(s.name, s.inputs, s.outputs, {"fp32": 0.0}, s.min_dice) for s in specs)

    monkeypatch.setattr(validate_module, "graph_specs", strict_specs)
    out = tmp_path / "strict"
    with pytest.raises(ValidationFailed, match=r"lga_image \(fp32\).*max abs difference"):
        export_onnx(tiny_model, out, validation_batch=3, log=lambda _: None)
    assert not out.exists() and not list(tmp_path.iterdir())
    checkpoint = save_lga_checkpoint(tiny_model, tmp_path / "m.safetensors")
    result = runner.invoke(app, ["onnx", "--checkpoint", str(checkpoint), "--out", str(out)])
    assert result.exit_code == 3, result.output
    assert not out.exists()


def test_existing_output_needs_force(tmp_path, tiny_model):
    out = tmp_path / "exists"
    out.mkdir()
    result = runner.invoke(app, ["onnx", "--preset", "tiny", "--out", str(out), "--no-validate"])
    assert result.exit_code == 2 and "--force" in result.output


def test_predict_writes_mask_and_overlay_from_onnx_and_checkpoint(tiny_export, tiny_model, qata_root, tmp_path):
    out_dir, _ = tiny_export
    image = sorted((qata_root / "Val_Folder" / "img").iterdir())[0]
    text = "Bilateral pulmonary infection, two infected areas, all left lung and all right lung."
    checkpoint = save_lga_checkpoint(tiny_model, tmp_path / "m.safetensors")
    masks = {}
    for name, model_ref in (("onnx", out_dir), ("torch", checkpoint)):
        result = runner.invoke(app, ["predict", "--model", str(model_ref), "--image", str(image), "--text", text,
                                     "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        from PIL import Image

        mask = np.asarray(Image.open(tmp_path / name / f"{image.stem}_mask.png"))
        overlay = np.asarray(Image.open(tmp_path / name / f"{image.stem}_overlay.png"))
        assert mask.shape == (224, 224) and set(np.unique(mask)) <= {0, 255}
        assert overlay.shape == (224, 224, 3)
        masks[name] = mask > 0
    from lga_export.metrics import dice

    assert dice(masks["onnx"], masks["torch"]) >= 0.999


def test_predict_folder_with_lvit_text_file(tiny_export, qata_root, tmp_path):
    out_dir, _ = tiny_export
    images = tmp_path / "img"
    images.mkdir()
    source = sorted((qata_root / "Val_Folder" / "img").iterdir())[:2]
    for path in source:
        (images / path.name).write_bytes(path.read_bytes())
    text_file = tmp_path / "text.csv"
    text_file.write_text("Image,Description\n" + "".join(f"mask_{p.name},Unilateral pulmonary infection..\n" for p in source))
    result = runner.invoke(app, ["predict", "--model", str(out_dir), "--images", str(images),
                                 "--text-file", str(text_file), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "out").glob("*_mask.png"))) == 2


def test_predict_bad_input_is_one_line_exit_2(tiny_export, tmp_path, qata_root):
    out_dir, _ = tiny_export
    image = sorted((qata_root / "Val_Folder" / "img").iterdir())[0]
    not_image = tmp_path / "notes.png"
    not_image.write_text("not an image")
    cases = [
        (["--image", str(tmp_path / "absent.png"), "--text", "x"], "no such image"),
        (["--image", str(not_image), "--text", "x"], "not a readable image"),
        (["--image", str(image), "--text", "  "], "empty text"),
        (["--image", str(image)], "needs --text"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["predict", "--model", str(out_dir), *args, "--out", str(tmp_path / "o")])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_export_of_another_preset_than_its_manifest_is_refused(tiny_export, tmp_path, qata_root):
    import shutil

    out_dir, _ = tiny_export
    copy = tmp_path / "copy"
    shutil.copytree(out_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["config"].update(preset="vit_b", image_size=1024, patch_size=16, embed_dim=768)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    image = sorted((qata_root / "Val_Folder" / "img").iterdir())[0]
    result = runner.invoke(app, ["predict", "--model", str(copy), "--image", str(image), "--text", "x",
                                 "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "the manifest's vit_b config needs" in result.output


def test_tokenizer_of_another_text_model_is_refused(tiny_export, tmp_path, qata_root):
    import shutil

    from lga_export.modeling.text_encoder import load_tokenizer

    out_dir, _ = tiny_export
    copy = tmp_path / "copy"
    shutil.copytree(out_dir, copy)
    tokenizer = load_tokenizer(str(copy / "tokenizer"))
    tokenizer.add_tokens([f"newtoken{i}" for i in range(10)])
    shutil.rmtree(copy / "tokenizer")
    tokenizer.save_pretrained(copy / "tokenizer")
    image = sorted((qata_root / "Val_Folder" / "img").iterdir())[0]
    result = runner.invoke(app, ["predict", "--model", str(copy), "--image", str(image), "--text", "x",
                                 "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "tokenizer belongs to another text model" in result.output


def test_a_batch_baked_into_a_constant_is_caught(tiny_export, tiny_model, tmp_path):
    from lga_export.export.onnx_export import check_graph

    out, _ = tiny_export
    spec = graph_specs(tiny_model.config)[0]
    model = onnx.load(str(out / spec.filename()))
    for value in list(model.graph.input) + list(model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 2  # what a tracer that specialised batch writes
    path = tmp_path / "baked.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ValidationFailed, match="axis 0 of input_ids was baked into a constant"):
        check_graph(path, spec)
