"""OpenVINO backend (`ov`) and the latency settings of ONNX Runtime sessions, on the embedded model.

One FP32 export of the default model serves every test here; caches go to a temporary folder.
"""

from __future__ import annotations

import numpy as np
import pytest

from lga_export.contract import tolerance
from lga_export.runtime.sample_runs import run_samples
from lga_export.verify.comparator import compare_outputs
from lga_export.samples import validation_samples

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def export_dir(copy_of_plain_export, tmp_path_factory):
    return copy_of_plain_export(tmp_path_factory.mktemp("ov") / "onnx")


@pytest.fixture(scope="module")
def samples(data_root):
    return validation_samples(4, data_root)[0]


@pytest.fixture(scope="module")
def ort_reference(export_dir, samples, tmp_path_factory):
    from lga_export.runtime.registry import open_runner

    with open_runner("ort", export_dir, cache_dir=False) as runner:
        return run_samples(runner, samples, 2)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LGA_EXPORT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _parity(runner, samples, reference):
    names = [s.name for s in samples]
    return compare_outputs(reference, run_samples(runner, samples, 2, reference), names,
                           tolerance(runner.precision), ("ort-fp32", runner.label))


def test_ov_fp32_agrees_with_ort_through_the_factory(export_dir, samples, ort_reference, cache):
    from lga_export.runtime.registry import open_runner

    with open_runner("ov", export_dir, threads=2) as runner:
        parity = _parity(runner, samples, ort_reference)
        info = runner.describe()
    assert parity.passed, parity.problems
    assert parity.end_to_end.dice_worst >= tolerance("fp32").min_dice
    assert parity.text.max_abs_diff < 1e-4
    assert info["backend"] == "ov" and info["inference_precision"] == "fp32" and info["fallback"] is None
    assert info["compiled"]["lga_image"]["execution_devices"] == ["CPU"]
    assert info["compiled"]["lga_image"]["performance_hint"] == "LATENCY"
    assert info["compiled"]["lga_image"]["inference_num_threads"] == 2


def test_ov_bf16_meets_the_spec_or_records_the_fallback(export_dir, samples, ort_reference, cache):
    from lga_export.runtime.openvino_runner import cpu_bf16_support
    from lga_export.runtime.registry import open_runner

    with open_runner("ov", export_dir, "bf16") as runner:
        parity = _parity(runner, samples, ort_reference)
        info = runner.describe()
    if cpu_bf16_support()["supported"]:
        assert info["inference_precision"] == "bf16" and info["fallback"] is None, info
        assert set(info["compiled"]["lga_image"]["compute_layers_by_precision"]) == {"bf16"}
    else:
        assert info["inference_precision"] == "fp32" and "BF16" in info["fallback"], info
    assert parity.end_to_end.dice_worst >= tolerance("bf16").min_dice, parity.problems


def test_ov_bf16_falls_back_to_fp32_on_a_cpu_without_bf16(export_dir, monkeypatch, cache):
    from lga_export.bench.cases import Case, static_skip_reason
    from lga_export.runtime import openvino_runner
    from lga_export.runtime.registry import open_runner

    monkeypatch.setattr(openvino_runner, "cpu_bf16_support",
                        lambda core=None: {"supported": False, "cpu_flags": [], "openvino_capabilities": ["FP32"]})
    with open_runner("ov", export_dir, "bf16") as runner:
        info = runner.describe()
    assert info["precision"] == "bf16" and info["inference_precision"] == "fp32"
    assert "no native BF16" in info["fallback"]
    assert info["compiled"]["text_encoder"]["inference_precision_hint"] == "f32"
    described = runner.description()  # the typed fields reports read
    assert (described.precision, described.precision_in_use, described.fallback) == ("bf16", "fp32", info["fallback"])
    assert described.on_cpu and "inference precision used fp32 - this CPU has no native BF16" in described.settings
    assert "no native BF16" in static_skip_reason(Case("ov", "bf16"), "cpu", None, None)
    assert "no fp16 path" in static_skip_reason(Case("ov", "fp16"), "cpu", None, None)


def test_ov_compiles_with_other_settings_never_share_a_cached_blob(export_dir, samples, cache):
    """Issue #20: OpenVINO's CACHE_DIR does not tell compiles apart by their properties, so an FP32
    blob was imported for a BF16 compile (NaN logits). A compile with any other property (here the
    thread count and performance hint, which every CPU has) must write its own entry, never hit."""
    from lga_export.runtime.registry import open_runner

    statuses = []
    for options in ({"threads": 1}, {"threads": 2}, {"threads": 2, "performance_hint": "THROUGHPUT"},
                    {"threads": 1}):
        with open_runner("ov", export_dir, **options) as runner:
            statuses.append(runner.describe()["startup"]["lga_image"]["compiled_cache"])
    assert statuses == ["written", "written", "written", "hit"], statuses
    folders = sorted(p.name for p in (cache / "openvino").iterdir() if p.name.startswith("lga_image"))
    assert len(folders) == 3, folders


def test_ov_cache_key_holds_everything_that_changes_the_compile(export_dir, cache):
    from lga_export.runtime.openvino_runner import OpenVinoRunner
    from lga_export.runtime.registry import open_runner

    with open_runner("ov", export_dir, threads=1) as runner:
        assert isinstance(runner, OpenVinoRunner)
        config = runner.compile_config()
        base = runner.cache_folder("lga_image", 1, config)
        others = [runner.cache_folder("lga_image", 2, config), runner.cache_folder("lga_image", None, config),
                  runner.cache_folder("lga_image", 1, {**config, "INFERENCE_PRECISION_HINT": "bf16"}),
                  runner.cache_folder("lga_image", 1, {**config, "INFERENCE_NUM_THREADS": 2}),
                  runner.cache_folder("lga_image", 1, {**config, "PERFORMANCE_HINT": "THROUGHPUT"})]
    assert base is not None and len({base, *others}) == 6


def test_ov_bf16_after_fp32_with_one_cache_root_is_correct(export_dir, samples, ort_reference, cache):
    """The issue's reproduction: FP32 compiled first, its blob cached, then BF16 with the same cache
    root. Needs a CPU with native BF16 (avx512_bf16 or amx_bf16) that OpenVINO lists as BF16-capable."""
    from lga_export.runtime.openvino_runner import cpu_bf16_support, openvino
    from lga_export.runtime.registry import open_runner

    support = cpu_bf16_support(openvino().Core())
    if not support["supported"]:
        pytest.skip(f"this CPU has no native BF16 for OpenVINO (flags {support['cpu_flags']}, "
                    f"capabilities {support['openvino_capabilities']})")
    for precision in ("fp32", "bf16"):
        with open_runner("ov", export_dir, precision, threads=2) as runner:
            parity = _parity(runner, samples, ort_reference)
            info = runner.describe()
        assert info["startup"]["lga_image"]["compiled_cache"] == "written", (precision, info["startup"])
        assert info["inference_precision"] == precision and info["fallback"] is None, info
        assert parity.passed and parity.end_to_end.nonfinite == 0, (precision, parity.problems)
    with open_runner("ov", export_dir, "bf16", threads=2) as runner:  # now read back from its own entry
        parity = _parity(runner, samples, ort_reference)
        assert runner.describe()["startup"]["lga_image"]["compiled_cache"] == "hit"
    assert parity.passed and parity.end_to_end.nonfinite == 0, parity.problems


def test_compiled_and_optimised_model_caches_live_outside_the_export(export_dir, cache):
    from lga_export.artifact import open_export
    from lga_export.runtime.registry import open_runner

    before = sorted(p.name for p in export_dir.rglob("*"))
    for backend, key in (("ov", "compiled_cache"), ("ort", "optimized_cache")):
        states = []
        for _ in range(2):
            with open_runner(backend, export_dir) as runner:
                states.append({graph: v[key] for graph, v in runner.describe()["startup"].items()})
        assert set(states[0].values()) == {"written"} and set(states[1].values()) == {"hit"}, (backend, states)
    assert (cache / "openvino").is_dir() and (cache / "onnxruntime").is_dir()
    assert sorted(p.name for p in export_dir.rglob("*")) == before
    open_export(export_dir)  # every file still matches its sha256


def test_ort_session_options_are_recorded_and_a_cached_graph_gives_the_same_masks(export_dir, samples, cache):
    from lga_export.runtime.registry import open_runner

    outputs = []
    for _ in range(2):  # written, then read back from the cache
        with open_runner("ort", export_dir, threads=2) as runner:
            info = runner.describe()
            outputs.append(run_samples(runner, samples, 2))
    options = info["session_options"]
    assert options["allow_spinning"] is False and options["graph_optimization_level"] == "all"
    assert options["intra_op_threads"] == 2 and options["optimized_model_cache"] == str(cache / "onnxruntime")
    assert {v["optimized_cache"] for v in info["startup"].values()} == {"hit"}
    np.testing.assert_allclose(outputs[0].logits, outputs[1].logits, atol=1e-5)
    with open_runner("ort", export_dir, cache_dir=False, spinning=True, optimization="extended") as runner:
        options = runner.describe()["session_options"]
        assert options["allow_spinning"] is True and options["optimized_model_cache"] is None
        assert options["graph_optimization_level"] == "extended"


def test_predict_runs_on_openvino(export_dir, image_folder, tmp_path, cache):
    from PIL import Image

    from lga_export.predict import predict_files

    images, table = image_folder
    masks = {}
    for backend in ("ort", "ov"):
        written = predict_files(export_dir, images=images, text_file=table, out=tmp_path / backend, backend=backend)
        masks[backend] = {p.name: np.asarray(Image.open(p)) > 0 for p in written if p.name.endswith("_mask.png")}
    assert masks["ov"].keys() == masks["ort"].keys() and masks["ov"]
    for name, mask in masks["ov"].items():
        other = masks["ort"][name]
        overlap = 2 * (mask & other).sum() / max(mask.sum() + other.sum(), 1)
        assert overlap >= tolerance("fp32").min_dice or mask.sum() + other.sum() == 0, name


def test_bench_recommends_the_fastest_cpu_case_that_passes_its_gate():
    from lga_export.bench.markdown_report import recommendation, render_report  # noqa: F401

    from lga_export.runtime.base import RunnerDescription

    def case(backend, precision, e2e, image, worst, on_cpu=True):
        parity = {"end_to_end": {"dice_worst": worst, "nonfinite": 0}, "text_encoder": {"nonfinite": 0}}
        latency = {"end_to_end": {"p50_ms": e2e}, "lga_image": {"p50_ms": image}, "text_encoder": {"p50_ms": 1.0}}
        description = RunnerDescription(backend, precision, precision, "cpu" if on_cpu else "cuda", on_cpu).to_dict()
        return {"backend": backend, "precision": precision, "runner": {}, "description": description,
                "batches": {"1": {"parity": parity, "latency": latency}}}

    results = {"machine": {"device": "cpu"}, "settings": {"min_dice_agreement": None}, "cases": {
        "torch-fp32": case("torch", "fp32", 400.0, 390.0, 1.0),
        "ort-fp32": case("ort", "fp32", 50.0, 40.0, 1.0),
        "ort-int8": case("ort", "int8", 30.0, 20.0, 0.95),  # fastest, but below the 0.98 gate
        "ov-bf16": case("ov", "bf16", 40.0, 30.0, 0.995),
        "ort-fp16": case("ort", "fp16", 5.0, 4.0, 1.0, on_cpu=False),  # fastest, but its runner ran on CUDA
    }}
    rec = recommendation(results)
    assert rec["best"]["label"] == "ov-bf16"
    assert rec["best"]["vs_torch_fp32"]["end_to_end"] == pytest.approx(0.1)
    assert rec["best"]["vs_ort_fp32"]["image_graph"] == pytest.approx(0.75)
    assert [c["label"] for c in rec["ranking"]] == ["ort-int8", "ov-bf16", "ort-fp32", "torch-fp32"]
    assert not rec["ranking"][0]["passed"]


def test_caches_are_pruned_least_recently_used_first(tmp_path, monkeypatch):
    import os

    from lga_export.runtime.host import cache_limit_bytes, prune_cache, touch_cache_entry

    root = tmp_path / "openvino"
    root.mkdir()
    for age, name in enumerate(["newest", "middle", "oldest"]):
        entry = root / name
        entry.mkdir()
        (entry / "blob").write_bytes(b"x" * 1000)
        os.utime(entry, (1_000_000 - age * 100, 1_000_000 - age * 100))
    (root / "file.onnx").write_bytes(b"y" * 1000)  # ONNX Runtime's cache entries are files
    os.utime(root / "file.onnx", (0, 0))
    touch_cache_entry(root / "oldest")  # just used: now the most recent
    removed = prune_cache(root, keep=root / "newest", limit=2500)
    assert [p.name for p in removed] == ["file.onnx", "middle"]
    assert sorted(p.name for p in root.iterdir()) == ["newest", "oldest"]
    assert prune_cache(root, keep=root / "newest", limit=0) == [root / "oldest"]  # never the entry in use
    monkeypatch.setenv("LGA_EXPORT_CACHE_MAX_GB", "0.5")
    assert cache_limit_bytes() == 2**29
    monkeypatch.delenv("LGA_EXPORT_CACHE_MAX_GB")
    assert cache_limit_bytes() == 8 * 2**30  # garbage is a one-line error: tests/test_cache_trust.py
