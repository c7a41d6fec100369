"""OpenVINO INT8 (`lga-export onnx --int8 ov`) and the OpenVINO runner's static-batch compilation,
on the embedded model: the IR is listed and verified like any graph, validated against PyTorch,
run only by the `ov` backend, and refused by ONNX Runtime in one line."""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest

from lga_export.errors import LGAError
from lga_export.contract import IMAGE_GRAPH, TEXT_GRAPH, tolerance
from lga_export.runtime.sample_runs import run_samples
from lga_export.verify.comparator import compare_outputs
from lga_export.samples import validation_samples

pytest.importorskip("openvino")
pytest.importorskip("nncf")


@pytest.fixture(scope="module")
def ov_export(int8_export):
    """The default model exported with an OpenVINO INT8 image graph, validated (batch 2)."""
    return int8_export("ov")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LGA_EXPORT_CACHE", str(tmp_path / "cache"))


def test_ov_int8_keeps_the_declared_scopes_fp32_bias_and_all(ov_export):
    """OpenVINO splits a Conv/ConvTranspose/Gemm with a bias into the weighted op (renamed) and an
    Add that keeps the ONNX name; NNCF's ignored scope must name the weighted op, or the patch
    embedding and the decoder's upscaling end up INT8 although the manifest says FP32."""
    import openvino as ov

    from lga_export.export.quantize_ov import openvino_names

    out, manifest = ov_export
    core = ov.Core()
    onnx_names = [entry.split(" (")[0] for entry in manifest["int8"]["excluded_nodes"]]
    assert any("patch_embed" in entry for entry in manifest["int8"]["excluded_nodes"])
    kept = manifest["int8"]["excluded_openvino_ops"]  # names in the IR (OpenVINO numbers generated ones per read)
    assert len(openvino_names(core.read_model(str(out / "lga_image.onnx")), onnx_names)) == len(kept)
    assert any(name.endswith("/WithoutBiases") for name in kept)  # a biased op, found by its renamed weighted op

    def quantized_inputs(op) -> bool:
        """Whether a FakeQuantize feeds `op`, directly or through a Convert/Reshape/Transpose."""
        sources = [i.get_source_output().get_node() for i in op.inputs()]
        while sources:
            node = sources.pop()
            if node.get_type_name() == "FakeQuantize":
                return True
            if node.get_type_name() in ("Convert", "Reshape", "Transpose"):
                sources += [i.get_source_output().get_node() for i in node.inputs()]
        return False

    int8_ops = {op.get_friendly_name(): op for op in core.read_model(str(out / "lga_image.int8.xml")).get_ops()}
    assert {int8_ops[name].get_type_name() for name in kept} >= {"Convolution", "ConvolutionBackpropData", "MatMul"}
    assert not [name for name in kept if quantized_inputs(int8_ops[name])]
    assert any(quantized_inputs(op) for op in int8_ops.values())  # and the rest is INT8

def test_ov_int8_export_lists_the_ir_and_passes_validation(ov_export, data_root):
    out, manifest = ov_export
    entry = manifest["graphs"][IMAGE_GRAPH]["int8"]
    assert entry["file"] == "lga_image.int8.xml" and entry["external_data"] == ["lga_image.int8.bin"]
    assert {"lga_image.int8.xml", "lga_image.int8.bin"} <= set(manifest["files"])
    assert manifest["graphs"][TEXT_GRAPH]["int8"]["file"] == "text_encoder.onnx"  # the FP32 text graph
    int8 = manifest["int8"]
    assert int8["method"] == "ov" and int8["runtime"] == "ov" and int8["tool"] == "nncf.quantize"
    assert int8["calibration"]["count"] == 32 and int8["peak_memory_gb"] > 0
    result = manifest["validation"]["results"]["int8"]
    assert result["passed"] and result["end_to_end"]["dice_worst"] >= tolerance("int8").min_dice
    assert result["providers"] == {TEXT_GRAPH: ["CPU"], IMAGE_GRAPH: ["CPU"]}
    assert not list(out.parent.glob(".*"))  # no staging folder left beside the export


def test_ov_runs_the_int8_ir_and_ort_refuses_it(ov_export, data_root):
    from lga_export.artifact import open_export
    from lga_export.runtime.registry import int8_backend, open_runner

    out, _ = ov_export
    assert open_export(out).int8_format == "openvino-ir" and int8_backend(open_export(out)) == "ov"
    samples = validation_samples(4, data_root)[0]
    with open_runner("ort", out, cache_dir=False) as ort:
        reference = run_samples(ort, samples, 2)
    with open_runner("ov", out, "int8", threads=2) as runner:
        outputs = run_samples(runner, samples, 2, reference)
        info = runner.describe()
    parity = compare_outputs(reference, outputs, [s.name for s in samples], tolerance("int8"), ("ort-fp32", "ov-int8"))
    assert parity.passed, parity.problems
    assert parity.text.max_abs_diff < 1e-4  # the text graph stays FP32
    layers = info["compiled"][IMAGE_GRAPH]["compute_layers_by_precision"]
    assert any(p in layers for p in ("i8", "u8")), layers  # OpenVINO really runs integer kernels
    assert info["graphs"][IMAGE_GRAPH] == "lga_image.int8.xml"
    with pytest.raises(LGAError, match="OpenVINO IR.*--backend ov"):
        open_runner("ort", out, "int8", activate=False)


def test_ov_int8_needs_an_ov_int8_export(ov_export, tmp_path, copy_of_plain_export):
    from lga_export.runtime.registry import open_runner

    plain = copy_of_plain_export(tmp_path / "plain")
    with pytest.raises(LGAError, match="has no INT8 graphs.*--int8 ov"):
        open_runner("ov", plain, "int8", activate=False)


def test_a_changed_ir_weight_file_is_refused(ov_export, tmp_path):
    from lga_export.artifact import open_export

    copy = tmp_path / "copy"
    shutil.copytree(ov_export[0], copy)
    data = bytearray((copy / "lga_image.int8.bin").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "lga_image.int8.bin").write_bytes(bytes(data))
    with pytest.raises(LGAError, match="lga_image.int8.bin: sha256 differs"):
        open_export(copy)


def test_bench_routes_int8_to_the_backend_of_the_export():
    from lga_export.bench.cases import Case, static_skip_reason

    assert "ov-int8 runs it" in static_skip_reason(Case("ort", "int8"), "cpu", ["fp32", "int8"], None, "ov")
    assert static_skip_reason(Case("ov", "int8"), "cpu", ["fp32", "int8"], None, "ov") is None
    assert "ort-int8 runs it" in static_skip_reason(Case("ov", "int8"), "cpu", ["fp32", "int8"], None, "ort")
    assert "--int8 ov" in static_skip_reason(Case("ov", "int8"), "cpu", ["fp32"], None, None)


def test_missing_nncf_is_one_line_naming_the_extra(monkeypatch, default_model, tmp_path):
    from lga_export.export.quantize_ov import quantize_ov_int8

    monkeypatch.setitem(sys.modules, "nncf", None)
    with pytest.raises(LGAError, match=r"lga-export\[int8\]"):
        quantize_ov_int8(tmp_path / "a.onnx", tmp_path / "a.xml", config=default_model.config,
                         text_graph=tmp_path / "t.onnx", tokenizer_dir=tmp_path, data_root=None, count=4)


def test_image_graph_is_compiled_per_batch_size_and_matches_single_runs(ov_export, data_root):
    from lga_export.runtime import openvino_runner
    from lga_export.runtime.pipeline import Segmenter
    from lga_export.runtime.registry import open_runner
    from lga_export.contract import image_feeds

    samples = validation_samples(3, data_root)[0]
    with open_runner("ov", ov_export[0], threads=2) as runner:
        assert list(runner.compiled[IMAGE_GRAPH]) == [1] and list(runner.compiled[TEXT_GRAPH]) == [None]
        segmenter = Segmenter(runner)
        images = segmenter.image_batch([s.rgb for s in samples])
        texts = segmenter.text_embeddings([s.text for s in samples])
        single = [runner.infer(IMAGE_GRAPH, image_feeds(images[i:i + 1], texts[i:i + 1]))["mask_logits"] for i in range(3)]
        pair = runner.infer(IMAGE_GRAPH, image_feeds(images[:2], texts[:2]))["mask_logits"]
        triple = runner.infer(IMAGE_GRAPH, image_feeds(images, texts))["mask_logits"]
        assert openvino_runner.MAX_STATIC_BATCHES == 2
        assert list(runner.compiled[IMAGE_GRAPH]) == [1, 2, None]  # a third size runs on the dynamic model
        again = runner.infer(IMAGE_GRAPH, image_feeds(images[:1], texts[:1]))["mask_logits"]
        assert list(runner.compiled[IMAGE_GRAPH]) == [1, 2, None]
        assert runner.describe()["startup"][IMAGE_GRAPH]["static_batch"] is True
    np.testing.assert_allclose(pair, np.concatenate(single[:2]), atol=1e-4)
    np.testing.assert_allclose(triple, np.concatenate(single), atol=1e-4)
    np.testing.assert_array_equal(again, single[0])


def test_predict_int8_without_a_backend_runs_on_openvino(ov_export, image_folder, tmp_path):
    from lga_export.predict import predict_files
    from lga_export.runtime.registry import open_runner

    assert open_runner(None, ov_export[0], "int8", activate=False).backend == "ov"
    images, table = image_folder
    written = predict_files(ov_export[0], images=images, text_file=table, out=tmp_path / "masks", precision="int8")
    explicit = predict_files(ov_export[0], images=images, text_file=table, out=tmp_path / "ov", precision="int8",
                             backend="ov")
    masks = [(a, b) for a, b in zip(written, explicit) if a.name.endswith("_mask.png")]
    assert len(masks) == len(list(images.iterdir()))
    assert all(a.read_bytes() == b.read_bytes() for a, b in masks)  # the very run of --backend ov


def test_library_names_are_accepted_as_backends(ov_export):
    from lga_export.bench.cases import parse_list, BACKENDS
    from lga_export.runtime.registry import canonical_backend, open_runner

    assert open_runner("openvino", ov_export[0], "int8", activate=False).backend == "ov"
    assert open_runner("ONNXRuntime", ov_export[0], activate=False).backend == "ort"
    assert parse_list("openvino,ort,ov", BACKENDS, "backend", canonical_backend) == ["ov", "ort"]
    with pytest.raises(LGAError, match="unknown backend 'onnx'"):
        open_runner("onnx", ov_export[0], activate=False)
