"""lga-bench on the tiny preset: outputs, skipped backends with reasons, INT8 parity, gates, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from lga_export.bench import BenchSettings, run_benchmark
from lga_export.cli.bench import app

FAST = ["--samples", "2", "--batch", "1", "--warmup", "0", "--iters", "2", "--matmul-size", "256", "--threads", "2"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[object, Path, Path]:
    """A tiny model, its checkpoint (so the CLI loads the same weights) and its FP32 export."""
    from lga_export.checkpoint import save_lga_checkpoint
    from lga_export.export.exporter import export_onnx
    from lga_export.loading import load_model

    torch.manual_seed(0)
    model = load_model("tiny")
    folder = tmp_path_factory.mktemp("tiny")
    checkpoint = folder / "tiny.safetensors"
    save_lga_checkpoint(model, checkpoint)
    export_onnx(model, folder / "onnx", validate=False, log=lambda _: None)
    return model, checkpoint, folder / "onnx"


@pytest.fixture(scope="module")
def results(tiny, tmp_path_factory) -> tuple[dict, Path]:
    model, _, onnx_dir = tiny
    out = tmp_path_factory.mktemp("bench") / "out"
    settings = BenchSettings(backends=["torch", "ort", "trt"], precisions=["fp32", "int8"], batches=[1, 2],
                             samples=2, warmup=0, iters=2, threads=2, matmul_size=256)
    return run_benchmark(model, out, settings, onnx_dir=onnx_dir, log=lambda _: None, progress=False), out


def test_outputs_written_with_expected_keys(results) -> None:
    figures, out = results
    assert {"results.json", "report.md", "latency.png", "parity.png"} <= {p.name for p in out.iterdir()}
    stored = json.loads((out / "results.json").read_text())
    for key in ("machine", "libraries", "settings", "samples", "compute", "cases", "skipped", "gates", "peak_rss_mb"):
        assert key in stored, key
    assert stored["machine"]["logical_cores"] >= 1 and stored["settings"]["threads"] == 2
    assert stored["compute"]["image_graph_flops"]["flops"] > 0
    assert stored["compute"]["matmul_peak"]["gflops_best"] > 0
    assert set(stored["cases"]) == {"torch-fp32", "ort-fp32", "ort-int8"}
    for case in stored["cases"].values():
        assert set(case["batches"]) == {"1", "2"}
        for batch in case["batches"].values():
            for part in ("text_encoder", "lga_image", "end_to_end"):
                latency = batch["latency"][part]
                assert latency["p50_ms"] > 0 and len(latency["times_ms"]) == 2
                assert {"p90_ms", "p99_ms", "mean_ms", "throughput"} <= set(latency)
            assert batch["image_gflops"] > 0
    ort = stored["cases"]["ort-fp32"]
    assert ort["runner"]["providers_in_use"]["lga_image"] == ["CPUExecutionProvider"]
    assert ort["batches"]["1"]["parity"]["dice_agreement_worst"] >= 0.99
    report = (out / "report.md").read_text()
    assert "ORT FP32 / PyTorch FP32 latency" in report and "GFLOP/s" in report


def test_skipped_backends_listed_with_reasons(results) -> None:
    skipped = {(s["backend"], s["precision"]): s["reason"] for s in results[0]["skipped"]}
    assert ("trt", "fp32") in skipped and "engines" in skipped[("trt", "fp32")]
    assert ("trt", "int8") in skipped and ("torch", "int8") in skipped
    assert all(reason for reason in skipped.values())
    report = (results[1] / "report.md").read_text()
    assert "## Skipped" in report and "trt | fp32" in report


def test_int8_parity_computed(results) -> None:
    int8 = results[0]["cases"]["ort-int8"]
    parity = int8["batches"]["1"]["parity"]
    assert len(parity["per_sample_dice_agreement"]) == 2
    assert parity["logits_nonfinite"] == 0 and 0.0 <= parity["dice_agreement_worst"] <= 1.0
    assert parity["text_max_abs_diff"] < 1e-3  # the text graph stays FP32
    assert results[0]["int8"]["weight_type"] == "QInt8"
    assert (results[1] / "int8" / "lga_image.int8.onnx").is_file()


def test_failed_gate_exits_3_and_report_names_it(tiny, tmp_path) -> None:
    _, checkpoint, onnx_dir = tiny
    out = tmp_path / "gated"
    result = CliRunner().invoke(app, ["--checkpoint", str(checkpoint), "--onnx", str(onnx_dir), "--backends", "ort",
                                      "--precision", "fp32", "--max-latency-ratio", "0.000001",
                                      "--min-dice-agreement", "0.5", "--out", str(out), *FAST])
    assert result.exit_code == 3, result.output
    report = (out / "report.md").read_text()
    assert "**FAILED:**" in report and "ort-fp32 batch 1: image-graph p50 latency ratio" in report
    failures = json.loads((out / "results.json").read_text())["gates"]["failures"]
    assert len(failures) == 1  # the Dice gate (0.5) passes; only the latency gate fails


def test_refuses_existing_output_and_unknown_backend(tiny, tmp_path) -> None:
    _, checkpoint, onnx_dir = tiny
    (tmp_path / "taken").mkdir()
    base = ["--checkpoint", str(checkpoint), "--onnx", str(onnx_dir), *FAST]
    taken = CliRunner().invoke(app, [*base, "--backends", "torch", "--precision", "fp32", "--out", str(tmp_path / "taken")])
    assert taken.exit_code == 2 and "--force" in taken.output
    unknown = CliRunner().invoke(app, [*base, "--backends", "tflite", "--out", str(tmp_path / "x")])
    assert unknown.exit_code == 2 and "tflite" in unknown.output
