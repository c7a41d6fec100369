"""lga-bench on the embedded trained model: outputs, skipped backends with reasons, INT8 parity,
gates (spec thresholds per precision, nothing compared fails), exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lga_export.bench import BenchSettings, run_benchmark
from lga_export.cli.bench import app
from lga_export.contract import TOLERANCES
from lga_export.loading import embedded_checkpoint

# Pinned to the CPU: on a GPU host the bench defaults to cuda, where the dev install's CPU
# onnxruntime has no CUDA provider and the expected cases differ (#22 bug 4).
FAST = ["--samples", "2", "--batch", "1", "--warmup", "0", "--iters", "2", "--matmul-size", "256", "--threads", "2",
        "--device", "cpu"]


TINY = str(embedded_checkpoint("tiny"))  # the model the module's export was made from


@pytest.fixture(scope="module")
def results(default_model, tmp_path_factory, data_root) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("bench") / "out"
    settings = BenchSettings(backends=["torch", "ort", "trt"], precisions=["fp32", "int8"], batches=[1, 2],
                             samples=2, warmup=0, iters=2, threads=2, matmul_size=256, data_root=data_root,
                             device="cpu")
    return run_benchmark(default_model, out, settings, log=lambda _: None, progress=False), out


def test_known_masks_give_known_figures_and_the_tolerance_decides() -> None:
    """Dice and IoU of masks whose overlap is counted by hand, and the parity verdict flipping at the
    tolerance's min_dice and atol: a figure merely in [0, 1] or a gate that ignores it fails here."""
    import numpy as np

    from lga_export.contract import Tolerance
    from lga_export.verify.metrics import dice, iou
    from lga_export.verify.parity import compare, failures

    target = np.zeros((4, 4), bool)
    target[:2, :2] = True  # 4 pixels
    drawn = np.zeros((4, 4), bool)
    drawn[0, :] = True  # 4 pixels, 2 of them in the target
    assert dice(drawn, target) == pytest.approx(0.5) and iou(drawn, target) == pytest.approx(1 / 3)
    assert dice(drawn, drawn) == pytest.approx(1.0) and dice(drawn, ~drawn) == 0.0
    assert dice(target & False, target & False) == 1.0  # two empty masks agree
    reference = np.where(target, 3.0, -1.0)[None].astype(np.float32)  # 1 x 4 x 4 logits
    candidate = np.where(drawn, 1.0, -1.0)[None].astype(np.float32)
    parity = compare(reference, candidate, ["x.png"], masks=True)
    assert parity.dice_worst == pytest.approx(0.5) and parity.worst_sample == "x.png" and parity.max_abs_diff == 4.0
    assert failures(parity, Tolerance(atol=None, min_dice=0.49)) == []
    assert failures(parity, Tolerance(atol=None, min_dice=0.51)) == [
        "mask Dice agreement 0.5000 < 0.51 at sample x.png"]
    assert failures(parity, Tolerance(atol=4.0, min_dice=0.49)) == []
    assert failures(parity, Tolerance(atol=3.9, min_dice=0.49)) == ["max abs difference 4 > 3.9"]
    assert failures(parity, Tolerance(atol=3.9, min_dice=0.49), check_atol=False) == []


def test_latency_summary_and_its_results_schema_have_the_same_fields() -> None:
    """timing.Latency and results.LatencyFigures (the results.json schema) describe one record twice;
    a field added to one and not the other fails here."""
    from dataclasses import fields

    from lga_export.bench.results import LatencyFigures
    from lga_export.bench.timing import Latency, summarize

    assert {f.name for f in fields(Latency)} == set(LatencyFigures.__annotations__)
    assert set(summarize([1.0, 3.0], batch=2).to_dict()) == set(LatencyFigures.__annotations__)


def test_outputs_written_with_expected_keys(results) -> None:
    figures, out = results
    assert {"results.json", "report.md", "latency.png", "parity.png", "onnx"} <= {p.name for p in out.iterdir()}
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
                times = latency["times_ms"]
                assert latency["p50_ms"] > 0 and len(times) == 2
                # the summary is of these very times (not merely present): median, mean, order, rate
                assert latency["p50_ms"] == pytest.approx(sum(times) / 2) == latency["mean_ms"]
                assert min(times) <= latency["p50_ms"] <= latency["p90_ms"] <= latency["p99_ms"] <= max(times)
                assert latency["throughput"] == pytest.approx(latency["batch"] * 1000.0 / latency["mean_ms"])
            assert batch["image_gflops"] > 0
            assert min(batch["parity"]["end_to_end"]["reference_foreground"]) > 0  # real masks compared
    ort = stored["cases"]["ort-fp32"]
    assert ort["runner"]["providers_in_use"]["lga_image"] == ["CPUExecutionProvider"]
    assert ort["batches"]["1"]["parity"]["end_to_end"]["dice_worst"] >= TOLERANCES["fp32"].min_dice
    report = (out / "report.md").read_text()
    assert "ORT FP32 / PyTorch FP32 latency" in report and "GFLOP/s" in report
    assert stored["gates"]["passed"] and stored["gates"]["min_dice_agreement"] == {"ort-fp32": 0.999, "ort-int8": 0.98}


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
    assert len(parity["end_to_end"]["per_sample_dice"]) == 2 and parity["end_to_end"]["nonfinite"] == 0
    assert parity["end_to_end"]["dice_worst"] >= TOLERANCES["int8"].min_dice
    assert parity["text_encoder"]["max_abs_diff"] < 1e-3  # the text graph stays FP32
    assert results[0]["int8"]["weight_type"] == "QInt8"
    assert (results[1] / "onnx" / "lga_image.int8.onnx").is_file()


def test_failed_gate_exits_3_and_report_names_it(results, tmp_path) -> None:
    out = tmp_path / "gated"
    result = CliRunner().invoke(app, ["--checkpoint", TINY, "--onnx", str(results[1] / "onnx"), "--backends", "ort",
                                      "--precision", "fp32", "--max-latency-ratio", "0.000001",
                                      "--min-dice-agreement", "0.5", "--out", str(out), *FAST])
    assert result.exit_code == 3, result.output
    report = (out / "report.md").read_text()
    assert "**FAILED:**" in report and "ort-fp32 batch 1: image-graph p50 latency ratio" in report
    failures = json.loads((out / "results.json").read_text())["gates"]["failures"]
    assert len(failures) == 1  # the Dice gate (0.5) passes; only the latency gate fails


def test_a_gate_that_compared_nothing_fails(tmp_path) -> None:
    out = tmp_path / "nothing"
    result = CliRunner().invoke(app, ["--checkpoint", TINY, "--backends", "trt", "--precision", "fp32", "--min-dice-agreement", "0.99",
                                      "--out", str(out), *FAST])
    assert result.exit_code == 3, result.output
    assert "no backend was compared" in result.output
    assert "no backend was compared" in (out / "report.md").read_text()


def test_require_all_fails_on_a_skipped_case(results, tmp_path) -> None:
    result = CliRunner().invoke(app, ["--checkpoint", TINY, "--onnx", str(results[1] / "onnx"), "--backends", "ort",
                                      "--precision", "fp32,bf16", "--require-all", "--out", str(tmp_path / "o"), *FAST])
    assert result.exit_code == 3 and "ort-bf16 did not run" in result.output, result.output


def test_refuses_existing_output_unknown_backend_and_bad_values(results, tmp_path) -> None:
    (tmp_path / "taken").mkdir()
    base = ["--onnx", str(results[1] / "onnx")]
    taken = CliRunner().invoke(app, ["--checkpoint", TINY, *base, *FAST, "--backends", "torch", "--precision", "fp32", "--out",
                                     str(tmp_path / "taken")])
    assert taken.exit_code == 2 and "--force" in taken.output
    for args, message in [(["--backends", "tflite"], "tflite"), (["--matmul-size", "-1"], "--matmul-size"),
                          (["--data", str(tmp_path / "typo")], "no qata-cov19"), (["--batch", "x"], "--batch")]:
        result = CliRunner().invoke(app, ["--checkpoint", TINY, *base, *FAST, *args, "--out", str(tmp_path / "x")])
        assert result.exit_code == 2 and message in result.output, (args, result.output)
        assert not (tmp_path / "x").exists()


def test_a_gpu_host_still_runs_the_cpu_bench_and_reads_runner_device_times(results, tmp_path, monkeypatch) -> None:
    """Fake-backed (torch is told a GPU exists; the torch runner's device time is a stand-in).
    #22 bug 4: FAST pins --device cpu, so this module's cases are the same on a GPU host. #22 bug 2:
    device_ms comes from the runner's own events around its enqueue, not from events around infer."""
    import torch

    from lga_export.runtime.torch_runner import TorchRunner

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "Fake GPU")
    monkeypatch.setattr(TorchRunner, "last_device_ms", lambda self: 2.0)
    out = tmp_path / "host"
    result = CliRunner().invoke(app, ["--checkpoint", TINY, "--onnx", str(results[1] / "onnx"), "--backends", "torch,ort", "--precision",
                                      "fp32", "--out", str(out), *FAST])  # exported before torch was told of a GPU
    assert result.exit_code == 0, result.output
    stored = json.loads((out / "results.json").read_text())
    assert stored["machine"]["device"] == "cpu" and set(stored["cases"]) == {"torch-fp32", "ort-fp32"}
    assert stored["cases"]["ort-fp32"]["runner"]["providers_in_use"]["lga_image"] == ["CPUExecutionProvider"]
    latency = stored["cases"]["torch-fp32"]["batches"]["1"]["latency"]
    assert latency["lga_image"]["device_ms"]["p50_ms"] == 2.0 and latency["end_to_end"]["device_ms"] is None
    assert stored["cases"]["ort-fp32"]["batches"]["1"]["latency"]["lga_image"]["device_ms"] is None
