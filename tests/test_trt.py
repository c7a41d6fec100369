"""TensorRT engines: profiles, manifests and refusals, FP16 graph selection, the CLI without
TensorRT (CPU, here), and engine build + parity against PyTorch (GPU with TensorRT only)."""

from __future__ import annotations

import importlib
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from lga_export.cli.main import app
from lga_export.config import get_preset
from lga_export.errors import LGAError
from lga_export.export.specs import graph_specs
from lga_export.trt_engines import _trt, build
from lga_export.trt_engines import inspect as build_inspect
from lga_export.trt_engines.inspect import layer_report, precision_counts, summary_markdown, tensor_precision
from lga_export.trt_engines.manifest import EngineFiles, check_compatible, incompatibility, read_manifest, write_json
from lga_export.trt_engines.profiles import ProfileBounds, check_shapes, engine_profile, profile_from_json, profile_to_json
from lga_export.trt_engines.sources import onnx_digests, select_onnx

TINY = get_preset("tiny")
ENV = {"tensorrt_version": "10.14.1", "gpu_name": "NVIDIA H200", "compute_capability": "9.0"}


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


def _export_dir(tmp_path: Path, precisions: tuple[str, ...] = ("fp32",), with_graphs_entry: bool = True) -> Path:
    folder = tmp_path / "onnx"
    folder.mkdir()
    graphs: dict = {}
    for spec in graph_specs(TINY):
        for precision in precisions:
            _write_onnx(folder / spec.filename(precision), external=precision == "fp32")
            graphs.setdefault(spec.name, {})[precision] = {"file": spec.filename(precision), "sha256": "x"}
    manifest = {"config": json.loads(TINY.to_json()), "opset": 18}
    if with_graphs_entry:
        manifest["graphs"] = graphs
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _manifest(digests: dict) -> dict:
    text, _ = graph_specs(TINY)
    bounds = ProfileBounds.for_config(TINY)
    return build.engine_manifest(text, "fp32", engine_profile(text, bounds), bounds, ENV, digests,
                                 {"config": json.loads(TINY.to_json()), "opset": 18}, Path("."), 1.0, {"fp32": 3})


# ---------------------------------------------------------------- profiles

def test_profiles_follow_the_specs() -> None:
    text, image = graph_specs(TINY)
    bounds = ProfileBounds.for_config(TINY, min_batch=1, opt_batch=2, max_batch=4, max_text_length=32)
    text_profile = engine_profile(text, bounds)
    assert set(text_profile) == set(text.input_names)
    assert text_profile["input_ids"] == ((1, 1), (2, 32), (4, 32))
    assert text_profile["attention_mask"] == text_profile["input_ids"]
    image_profile = engine_profile(image, bounds)
    assert image_profile["image"] == ((1, 3, 256, 256), (2, 3, 256, 256), (4, 3, 256, 256))
    assert image_profile["text_embedding"] == ((1, 1, TINY.embed_dim), (2, 1, TINY.embed_dim), (4, 1, TINY.embed_dim))
    assert profile_from_json(json.loads(json.dumps(profile_to_json(image_profile)))) == image_profile


def test_profile_defaults_come_from_the_config() -> None:
    bounds = ProfileBounds.for_config(TINY, min_batch=2, max_batch=8)
    assert (bounds.min_batch, bounds.opt_batch, bounds.max_batch) == (2, 2, 8)
    assert bounds.max_text_length == TINY.max_text_length


@pytest.mark.parametrize("kwargs", [dict(min_batch=0), dict(min_batch=3, max_batch=2),
                                    dict(opt_batch=5, max_batch=4), dict(max_text_length=0)])
def test_bad_bounds_are_refused(kwargs: dict) -> None:
    with pytest.raises(LGAError):
        ProfileBounds.for_config(TINY, **kwargs)


def test_shapes_outside_the_profile_are_refused() -> None:
    text, _ = graph_specs(TINY)
    profile = engine_profile(text, ProfileBounds(max_batch=4, max_text_length=16))
    check_shapes("text_encoder", profile, {"input_ids": (4, 16), "attention_mask": (1, 1)})
    with pytest.raises(LGAError, match=r"input_ids has shape \(5, 16\).*--max-batch"):
        check_shapes("text_encoder", profile, {"input_ids": (5, 16), "attention_mask": (5, 16)})
    with pytest.raises(LGAError, match="outside"):
        check_shapes("text_encoder", profile, {"input_ids": (1, 17), "attention_mask": (1, 17)})
    with pytest.raises(LGAError, match="missing inputs"):
        check_shapes("text_encoder", profile, {"input_ids": (1, 4)})


# ---------------------------------------------------------------- manifests and refusals

def test_manifest_round_trip_and_compatible(tmp_path: Path) -> None:
    onnx_path = tmp_path / "text_encoder.onnx"
    _write_onnx(onnx_path, external=True)
    digests = onnx_digests(onnx_path)
    assert digests["external_data_sha256"] == {"text_encoder.onnx.data": digests["external_data_sha256"]["text_encoder.onnx.data"]}
    path = tmp_path / "m.json"
    write_json(path, _manifest(digests), force=False)
    manifest = read_manifest(path)
    assert manifest["environment"] == ENV and manifest["precision"] == "fp32"
    assert manifest["profile"]["input_ids"]["max"] == [4, TINY.max_text_length]
    for key in ("built_at", "lga_export_version", "build_seconds", "layer_precisions"):
        assert key in manifest
    assert incompatibility(manifest, ENV, digests) is None
    assert incompatibility(manifest, ENV, None) is None  # ONNX gone: nothing to compare against
    check_compatible(manifest, ENV, onnx_digests(onnx_path))
    with pytest.raises(LGAError, match="exists"):
        write_json(path, manifest, force=False)


@pytest.mark.parametrize("key,value,word", [("gpu_name", "NVIDIA A100-SXM4-80GB", "GPU"),
                                            ("tensorrt_version", "11.0.0", "TensorRT"),
                                            ("compute_capability", "8.0", "compute capability")])
def test_other_machine_is_refused(tmp_path: Path, key: str, value: str, word: str) -> None:
    onnx_path = tmp_path / "g.onnx"
    _write_onnx(onnx_path)
    manifest = _manifest(onnx_digests(onnx_path))
    with pytest.raises(LGAError, match=word) as info:
        check_compatible(manifest, {**ENV, key: value}, None)
    assert "\n" not in str(info.value) and "--force" in str(info.value)


def test_changed_onnx_is_refused(tmp_path: Path) -> None:
    onnx_path = tmp_path / "g.onnx"
    _write_onnx(onnx_path, external=True, value=1.0)
    manifest = _manifest(onnx_digests(onnx_path))
    data = tmp_path / "g.onnx.data"
    data.write_bytes(np.full((4,), 2.0, dtype=np.float32).tobytes())  # same graph file, other weights
    assert "weights" in incompatibility(manifest, ENV, onnx_digests(onnx_path))
    _write_onnx(onnx_path, external=False, value=2.0)  # other graph file
    with pytest.raises(LGAError, match="sha256 differs"):
        check_compatible(manifest, ENV, onnx_digests(onnx_path))


def test_missing_or_foreign_manifest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LGAError, match="without its manifest"):
        read_manifest(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text('{"graph": "x"}')
    with pytest.raises(LGAError, match="not an lga-export engine manifest"):
        read_manifest(tmp_path / "bad.json")


# ---------------------------------------------------------------- FP16 graph selection

def test_fp16_selects_fp16_graphs(tmp_path: Path) -> None:
    folder = _export_dir(tmp_path, ("fp32", "fp16"))
    assert {g: p.name for g, p in select_onnx(folder, "fp16").items()} == {
        "text_encoder": "text_encoder.fp16.onnx", "lga_image": "lga_image.fp16.onnx"}
    assert select_onnx(folder, "fp32")["lga_image"].name == "lga_image.onnx"


def test_fp16_without_fp16_graphs_says_reexport(tmp_path: Path) -> None:
    folder = _export_dir(tmp_path, ("fp32",), with_graphs_entry=False)  # names fall back to the specs
    assert select_onnx(folder, "fp32")["text_encoder"].name == "text_encoder.onnx"
    with pytest.raises(LGAError, match="re-export with --fp16"):
        select_onnx(folder, "fp16")


def test_export_dir_without_manifest(tmp_path: Path) -> None:
    with pytest.raises(LGAError, match="lga-export onnx"):
        select_onnx(tmp_path, "fp32")


# ---------------------------------------------------------------- layer report

INSPECTOR_JSON = {"Layers": [
    {"Name": "matmul", "LayerType": "CaskGemmMatrixMultiply", "TacticName": "sm90_xmma_gemm_f16",
     "Inputs": [{"Name": "a", "Format/Datatype": "Row major linear FP16 format"}],
     "Outputs": [{"Name": "b", "Format/Datatype": "Row major linear FP16 format"}]},
    {"Name": "norm", "LayerType": "Myelin", "TacticValue": "0x0",
     "Outputs": [{"Name": "c", "Format/Datatype": "Float"}]},
    {"Name": "cast", "LayerType": "Reformat", "Outputs": [{"Name": "d", "Format/Datatype": "Half"},
                                                           {"Name": "e", "Format/Datatype": "Float"}]},
    {"Name": "dyn", "LayerType": "NoOp", "Outputs": [{"Name": "f", "Format/Datatype": "N/A due to dynamic shapes"}]},
]}


def test_layer_report_counts_precisions() -> None:
    rows = layer_report(json.dumps(INSPECTOR_JSON))
    assert [r["precision"] for r in rows] == ["fp16", "fp32", "mixed", "unknown"]
    assert rows[0]["tactic"] == "sm90_xmma_gemm_f16"
    assert precision_counts(rows) == {"fp16": 1, "fp32": 1, "mixed": 1, "unknown": 1}
    md = summary_markdown("lga_image fp16", rows)
    assert "| fp16 | 1 |" in md and "4 layers." in md
    assert layer_report({"Layers": ["a", "b"]})[0]["precision"] == "unknown"  # not DETAILED
    assert tensor_precision("Two wide channel vectorized row major FP16 format") == "fp16"
    assert tensor_precision("Row major linear BF16") == "bf16"


# ---------------------------------------------------------------- build orchestration (TensorRT faked)

@pytest.fixture()
def fake_tensorrt(monkeypatch):
    """Everything but the TensorRT calls themselves: checks, files, manifests, atomicity."""
    monkeypatch.setattr(_trt, "require_tensorrt_and_gpu", lambda: None)
    monkeypatch.setattr(_trt, "current_environment", lambda device=None: dict(ENV))
    monkeypatch.setattr(build, "_build_bytes", lambda onnx_path, *a: b"engine:" + onnx_path.name.encode())
    monkeypatch.setattr(build, "_layer_reports", lambda data, profile: layer_report(INSPECTOR_JSON))


def test_build_writes_engines_manifests_and_reports(tmp_path: Path, fake_tensorrt) -> None:
    folder = _export_dir(tmp_path, ("fp32", "fp16"))
    built = build.build_engines(folder, tmp_path / "engines", fp16=True, max_batch=2, max_text_length=16)
    assert [b.graph for b in built] == ["text_encoder", "lga_image"]
    files = EngineFiles(tmp_path / "engines", "lga_image", "fp16")
    assert files.engine.read_bytes() == b"engine:lga_image.fp16.onnx"
    manifest = read_manifest(files.manifest)
    assert manifest["source"]["onnx_file"] == "lga_image.fp16.onnx"
    assert manifest["profile"]["image"]["max"] == [2, 3, 256, 256]
    assert json.loads(files.layers_json.read_text())[0]["precision"] == "fp16"
    assert "| fp16 | 1 |" in files.layers_md.read_text()
    check_compatible(manifest, ENV, onnx_digests(folder / "lga_image.fp16.onnx"))
    with pytest.raises(LGAError, match="--force"):
        build.build_engines(folder, tmp_path / "engines", fp16=True)
    build.build_engines(folder, tmp_path / "engines", fp16=True, force=True)


def test_interrupted_build_leaves_no_engine(tmp_path: Path, fake_tensorrt, monkeypatch) -> None:
    folder = _export_dir(tmp_path)
    out = tmp_path / "engines"
    real_summary = build_inspect.summary_markdown

    def interrupted_while_writing(*args):
        assert list(out.glob(".*.partial"))  # the engine bytes are already staged
        raise KeyboardInterrupt

    monkeypatch.setattr(build_inspect, "summary_markdown", interrupted_while_writing)
    with pytest.raises(KeyboardInterrupt):
        build.build_engines(folder, out)
    assert sorted(p.name for p in out.iterdir()) == []  # no engine, no manifest, no temp file
    monkeypatch.setattr(build_inspect, "summary_markdown", real_summary)
    build.build_engines(folder, out)
    assert len(list(out.glob("*.engine"))) == 2 and len(list(out.glob("*.manifest.json"))) == 2


# ---------------------------------------------------------------- CLI without TensorRT / GPU

def test_trt_without_tensorrt_exits_2(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    result = CliRunner().invoke(app, ["trt", "--onnx", str(tmp_path)])
    assert result.exit_code == 2
    message = result.output.strip()
    assert len(message.splitlines()) == 1
    assert "TensorRT is not installed" in message and 'pip install "lga-export[tensorrt]"' in message
    assert "GPU" in message


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


def _exporter():
    """The ONNX exporter's library function, wherever this version keeps it."""
    for module in ("lga_export.export.exporter", "lga_export.export.onnx_export"):
        try:
            function = getattr(importlib.import_module(module), "export_onnx", None)
        except ImportError:
            continue
        if function is not None:
            return function
    return None


@pytest.fixture(scope="module")
def tiny_engines(tmp_path_factory):
    """The default tiny model exported (FP32 + FP16) and built into engines of both precisions."""
    reason = _tensorrt_ready()
    if reason:
        pytest.skip(reason)
    import torch

    from lga_export.checkpoint import save_lga_checkpoint
    from lga_export.loading import default_checkpoint, load_model

    root = tmp_path_factory.mktemp("trt")
    checkpoint = default_checkpoint()
    if checkpoint is None:
        torch.manual_seed(0)
        checkpoint = root / "tiny.safetensors"
        save_lga_checkpoint(load_model(preset="tiny"), checkpoint)
    export_onnx = _exporter()
    if export_onnx is None:
        pytest.skip("the ONNX exporter (export_onnx) is not available in this version")
    model = load_model(checkpoint=checkpoint).eval()
    onnx_dir = root / "onnx"
    wanted = {"fp16": True, "validate": False, "log": lambda line: None}
    accepted = inspect.signature(export_onnx).parameters
    export_onnx(model, onnx_dir, **{k: v for k, v in wanted.items() if k in accepted})
    engines = root / "engines"
    for fp16 in (False, True):
        build.build_engines(onnx_dir, engines, fp16=fp16, min_batch=1, opt_batch=2, max_batch=4, max_text_length=32)
    return model, onnx_dir, engines


@pytest.mark.tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_parity_with_pytorch(tiny_engines, precision: str) -> None:
    import torch

    from lga_export.export.specs import dummy_inputs
    from lga_export.metrics import mask_agreement, nonfinite_count
    from lga_export.trt_engines.runner import TensorRTRunner

    model, onnx_dir, engines = tiny_engines
    text_spec, image_spec = graph_specs(model.config)
    layers = json.loads(EngineFiles(engines, "lga_image", precision).layers_json.read_text())
    assert precision_counts(layers).get(precision, 0) > 0, precision_counts(layers)
    with TensorRTRunner(engines, precision, onnx_dir) as runner:
        for batch in (1, 3, 4):
            sizes = {"batch": batch, "sequence": 12}
            text_feeds = dummy_inputs(text_spec, sizes, seed=batch)
            got_text = runner.infer("text_encoder", text_feeds)["text_embedding"]
            with torch.no_grad():
                want_text = model.encode_text(*(torch.from_numpy(text_feeds[n]) for n in text_spec.input_names)).numpy()
            assert nonfinite_count(got_text) == 0
            assert np.abs(got_text - want_text).max() <= text_spec.atol[precision]
            image = dummy_inputs(image_spec, sizes, seed=batch)["image"]
            got = runner.infer("lga_image", {"image": image, "text_embedding": want_text})["mask_logits"]
            with torch.no_grad():
                want = model.forward_image(torch.from_numpy(image), torch.from_numpy(want_text)).numpy()
            assert got.shape == want.shape and nonfinite_count(got) == 0
            assert np.abs(got - want).max() <= image_spec.atol[precision], (batch, np.abs(got - want).max())
            assert min(mask_agreement(got, want)) >= image_spec.min_dice[precision]
        with pytest.raises(LGAError, match="outside"):
            runner.infer("lga_image", {"image": np.zeros((5, 3, 256, 256), np.float32),
                                       "text_embedding": np.zeros((5, 1, model.config.embed_dim), np.float32)})
