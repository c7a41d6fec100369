"""Reduced precision verifies itself where it runs, and the demo reports instead of failing for one
backend (issue #20 items 2 and 3).

A real graph that overflows in FP16 (the tiny model with its patch embedding scaled by 1e5:
its FP32 graphs are finite, its FP16 image graph returns NaN) is refused with one line naming the
CPU and the figure, falls back to FP32 where the caller does not insist, is read from the cached
verdict on the second open (no inference, nothing compiled), and runs as asked with
--no-self-check. Passing checks (OpenVINO INT8, and BF16 where the CPU has it) are computed once
per cache. lga-bench records the check and fails its gate on it; the demo shows a failing
backend with its figure and still succeeds while another deployment path passes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lga_export.errors import ValidationFailed
from lga_export.runtime import self_check as checks
from lga_export.runtime.host import cpu_identity
from lga_export.runtime.ort_runner import OnnxRuntimeRunner
from lga_export.runtime.openvino_runner import OpenVinoRunner, cpu_bf16_support
from lga_export.runtime.pipeline import Segmenter
from lga_export.runtime.registry import open_runner, register, unregister
from lga_export.samples import synthetic_samples


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("LGA_EXPORT_CACHE", str(root))
    return root


@pytest.fixture(scope="module")
def overflow(tmp_path_factory):
    """(export folder, model): the embedded tiny model whose residual stream is 1e5 times larger, so
    its FP16 image graph overflows (65504) into NaN while the FP32 graphs stay finite."""
    from lga_export.export.exporter import export_onnx
    from lga_export.loading import embedded_checkpoint, load_model

    model = load_model(checkpoint=embedded_checkpoint("tiny"))  # its own copy: default_model stays as it is
    with torch.no_grad():
        model.image_encoder.patch_embed.proj.weight.mul_(1e5)
        model.image_encoder.patch_embed.proj.bias.mul_(1e5)
    folder = tmp_path_factory.mktemp("overflow") / "onnx"
    export_onnx(model, folder, fp16=True, validate=False, log=lambda _: None)
    return folder, model


def _logits(runner) -> np.ndarray:
    sample = synthetic_samples(1, seed=5)[0]
    return Segmenter(runner).logits([sample.rgb], [sample.text])


def test_an_overflowing_fp16_graph_is_refused_falls_back_is_cached_and_can_be_skipped(overflow, cache, monkeypatch):
    folder, _ = overflow
    computed = checks.COMPUTED
    with pytest.raises(ValidationFailed) as info:
        open_runner("ort", folder, "fp16")
    line = str(info.value)
    assert "\n" not in line and cpu_identity()[0] in line and "NaN/Inf" in line, line
    assert "worst mask agreement 0.0000" in line and "--precision fp32" in line and "--fallback-fp32" in line
    assert checks.COMPUTED == computed + 1
    entries = list((cache / "onnxruntime").glob("self-check.ort-fp16.*"))  # beside the optimised graphs
    assert len(entries) == 1 and json.loads((entries[0] / checks.VERDICT).read_text())["passed"] is False

    compiled: list[str] = []
    activate = OnnxRuntimeRunner.activate_impl
    monkeypatch.setattr(OnnxRuntimeRunner, "activate_impl", lambda self: compiled.append(self.precision) or activate(self))
    with pytest.raises(ValidationFailed, match=r"\(cached verdict\)"):  # refused before anything is compiled
        open_runner("ort", folder, "fp16")
    assert compiled == [] and checks.COMPUTED == computed + 1

    with open_runner("ort", folder, "fp16", self_check="fallback") as runner:  # the caller did not insist
        assert runner.precision == "fp32" and compiled == ["fp32"]  # the FP16 graphs were never compiled
        description = runner.description()
        assert (description.precision, description.precision_in_use) == ("fp16", "fp32")
        assert "failed its self-check" in description.fallback and "FP32 runs instead" in description.fallback
        assert description.self_check["cached"] and description.self_check["state"] == "failed"
        assert runner.describe()["requested_precision"] == "fp16"
        assert np.isfinite(_logits(runner)).all()
    assert checks.COMPUTED == computed + 1

    with open_runner("ort", folder, "fp16", self_check="off") as runner:  # --no-self-check: runs as asked
        assert runner.precision == "fp16" and runner.self_check.state == "skipped"
        assert runner.description().self_check["ran"] is False
        assert not np.isfinite(_logits(runner)).all()  # what the check would have caught


def test_predict_refuses_falls_back_or_skips_on_the_cli(overflow, image_folder, tmp_path):
    from lga_export.cli.main import app

    folder, _ = overflow
    images, table = image_folder
    image = sorted(images.iterdir())[0]
    base = ["predict", "--model", str(folder), "--image", str(image), "--text", "Bilateral pulmonary infection.",
            "--precision", "fp16"]
    refused = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "refused")])
    assert refused.exit_code == 3, refused.stderr
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("failed: ort-fp16 failed its self-check on "), lines
    assert not (tmp_path / "refused").exists() or not any((tmp_path / "refused").iterdir())

    fallback = CliRunner().invoke(app, [*base, "--fallback-fp32", "--out", str(tmp_path / "fallback")])
    assert fallback.exit_code == 0, fallback.stderr
    assert "warning: ort-fp16 failed its self-check" in fallback.stderr and "FP32 runs instead" in fallback.stderr
    assert (tmp_path / "fallback" / f"{image.stem}_mask.png").is_file()

    skipped = CliRunner().invoke(app, [*base, "--no-self-check", "--out", str(tmp_path / "skipped")])
    assert skipped.exit_code == 3 and "NaN/Inf logits" in skipped.stderr  # predict's own last line of defence
    for command in ("predict", "serve"):
        shown = CliRunner().invoke(app, [command, "--help"]).stdout
        assert "--no-self-check" in shown and "--fallback-fp32" in shown


def test_passing_checks_run_once_per_machine(int8_export, cache):
    folder, _ = int8_export("ov")
    precisions = ["int8"] + (["bf16"] if cpu_bf16_support()["supported"] else [])  # bf16: for real on BF16 CPUs
    for precision in precisions:
        computed = checks.COMPUTED
        with open_runner("ov", folder, precision, threads=2) as runner:
            first = runner.description().self_check
        assert checks.COMPUTED == computed + 1 and first["state"] == "passed" and not first["cached"], first
        assert first["figure"]["nonfinite"] == 0 and first["figure"]["worst_agreement"] >= first["figure"]["gate"]
        assert first["reference"] == "ov-fp32" and max(first["figure"]["reference_foreground"]) > 0  # not vacuous
        with open_runner("ov", folder, precision, threads=2) as runner:
            second = runner.self_check
        assert checks.COMPUTED == computed + 1 and second.cached and second.passed and second.seconds < 1.0
        assert runner.describe()["self_check"]["cached"] is True
    names = sorted(p.name.split(".")[1] for p in (cache / "openvino").glob("self-check.*"))
    assert names == sorted(f"ov-{p}" for p in precisions)  # beside the compiled models, one verdict each


def test_a_failing_int8_graph_refuses_or_falls_back_on_every_cpu(int8_export, monkeypatch):
    """OpenVINO INT8 faked to return NaN logits (runs on any CPU): refused, or FP32 instead."""
    folder, _ = int8_export("ov")
    infer = OpenVinoRunner.infer_impl

    def nan_at_int8(self, graph, feeds):
        outputs = infer(self, graph, feeds)
        return {k: np.full_like(v, np.nan) for k, v in outputs.items()} if self.precision == "int8" else outputs

    monkeypatch.setattr(OpenVinoRunner, "infer_impl", nan_at_int8)
    with pytest.raises(ValidationFailed, match="ov-int8 failed its self-check on .*NaN/Inf.*against ov-fp32"):
        open_runner("ov", folder, "int8", threads=2)
    with open_runner("ov", folder, "int8", threads=2, self_check="fallback") as runner:
        assert runner.precision == "fp32" and runner.description().precision_in_use == "fp32"
        assert runner.self_check.cached and runner.description().fallback
    with open_runner(None, folder, "int8", self_check="record", threads=2) as runner:  # lga-bench keeps the runner
        assert runner.precision == "int8" and runner.self_check.passed is False


def test_lga_bench_records_the_check_and_fails_its_gate(overflow, tmp_path):
    from lga_export.bench import BenchSettings, run_benchmark

    folder, model = overflow
    settings = BenchSettings(backends=["ort"], precisions=["fp32", "fp16"], batches=[1], samples=1, warmup=0, iters=1,
                             matmul_size=64)
    with pytest.raises(ValidationFailed, match="ort-fp16: self-check failed on "):
        run_benchmark(model, tmp_path / "bench", settings, onnx_dir=folder, progress=False, log=lambda _: None)
    results = json.loads((tmp_path / "bench" / "results.json").read_text())  # written before the exit
    check = results["cases"]["ort-fp16"]["self_check"]
    assert check["ran"] and check["passed"] is False and check["cached"] is False and check["figure"]["nonfinite"] > 0
    assert results["cases"]["ort-fp16"]["description"]["self_check"]["state"] == "failed"
    assert "self_check" not in results["cases"]["ort-fp32"]  # FP32 is the reference: nothing to check
    report = (tmp_path / "bench" / "report.md").read_text()
    headline = report.split("## Headline")[1].split("## Latency")[0]
    assert "**ort-fp16 fails on this machine:**" in headline and "NaN/Inf" in headline
    assert "| ort-fp16 | failed | no | ort-fp32 | 0.0000 |" in report

    settings.self_check = False  # --no-self-check: recorded as skipped; the gate still sees the NaN
    with pytest.raises(ValidationFailed, match="NaN/Inf outputs"):
        run_benchmark(model, tmp_path / "unchecked", settings, onnx_dir=folder, progress=False, log=lambda _: None)
    results = json.loads((tmp_path / "unchecked" / "results.json").read_text())
    assert results["cases"]["ort-fp16"]["self_check"]["state"] == "skipped"


class BrokenOrt(OnnxRuntimeRunner):
    """A backend that fails on this CPU: ONNX Runtime whose image graph returns NaN."""

    backend = "broken-ort"
    aliases = ()

    def infer_impl(self, graph, feeds):
        outputs = super().infer_impl(graph, feeds)
        return {k: np.full_like(v, np.nan) for k, v in outputs.items()} if graph == "lga_image" else outputs


@pytest.fixture
def broken():
    name = register(BrokenOrt)
    yield name
    unregister(name)


def test_demo_shows_a_failing_backend_and_succeeds(broken, monkeypatch, tmp_path):
    """`lga-export demo` exits 0 with a backend failing on this CPU, shown with its figure in the
    demo's headline and the report's; with no passing deployment path it would exit 3."""
    from lga_export import demo, loading
    from lga_export.bench import BenchSettings
    from lga_export.cli.main import app

    small = BenchSettings(backends=["torch", "ort", broken], precisions=["fp32"], batches=[1], samples=2, warmup=0,
                          iters=1, matmul_size=64)
    monkeypatch.setattr(demo, "demo_settings", lambda: small)
    tiny = loading.embedded_checkpoint("tiny")  # the demo's job on the small model (the shipped default is lite)
    load = loading.load_model
    monkeypatch.setattr(loading, "load_model", lambda *args, **kwargs: load(checkpoint=tiny))
    monkeypatch.setattr(loading, "default_checkpoint", lambda: tiny)
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.stderr
    assert "  PASS ort-fp32: worst agreement 1.0000" in result.stdout
    assert "  FAIL broken-ort-fp32: worst agreement 0.0000 < 0.999, " in result.stdout and "NaN/Inf" in result.stdout
    assert "failing on this CPU (shown, not fatal: lga-bench exits 3 on them): broken-ort-fp32" in result.stdout
    report = (tmp_path / "demo" / "bench" / "report.md").read_text()
    headline = report.split("## Headline")[1].split("## Latency")[0]
    assert "**broken-ort-fp32 fails on this machine:**" in headline and "NaN/Inf outputs" in headline
    assert "FAILS its gate: worst agreement 0.0000 < 0.999" in headline  # in the ranking, with its figure

    rows = [{"label": "broken-ort-fp32", "status": "failed", "figure": "worst agreement 0.0000 < 0.999"},
            {"label": "ov-bf16", "status": "not run", "figure": "this CPU has no native BF16"}]
    with pytest.raises(ValidationFailed, match="no CPU deployment path passed its gate .*broken-ort-fp32: worst"):
        demo.require_a_passing_path(rows, tmp_path / "report.md")
    demo.require_a_passing_path([*rows, {"label": "ort-fp32", "status": "passed", "figure": ""}], tmp_path)


def _data_root_of(samples, root: Path) -> Path:
    """A data root in the LViT layout whose Val split holds `samples` (images, masks, reports)."""
    from PIL import Image

    folder = root / "qata-cov19" / "Val_Folder"
    (folder / "img").mkdir(parents=True)
    (folder / "labelcol").mkdir()
    rows = []
    for index, sample in enumerate(samples):
        name = f"val_{index}.png"
        Image.fromarray(sample.rgb).save(folder / "img" / name)
        Image.fromarray(sample.mask.astype("uint8") * 255).save(folder / "labelcol" / f"mask_{name}")
        rows.append(f'mask_{name},"{sample.text}"\n')
    (folder / "Val_text.csv").write_text("Image,Description\n" + "".join(rows))
    return root


def test_an_export_checks_itself_on_an_image_it_was_validated_on(default_model, tmp_path, cache):
    """The check sample travels in the export (file + report, sha256 in the manifest): the verdict
    names it, ran on it, and is keyed by it; an export without one (older) uses the built-in
    sample; a changed check sample is refused when the export is opened."""
    from lga_export.artifact import CHECK_SAMPLE, MANIFEST, open_export
    from lga_export.errors import LGAError
    from lga_export.export.exporter import export_onnx
    from lga_export.imageio import read_image

    own = synthetic_samples(3, seed=7)  # not the built-in check sample (seed 0)
    folder = tmp_path / "onnx"
    manifest = export_onnx(default_model, folder, fp16=True, data_root=_data_root_of(own, tmp_path / "data"),
                           log=lambda _: None)
    entry = manifest["check_sample"]
    assert entry == {"file": CHECK_SAMPLE, "name": "val_0.png", "text": own[0].text, "source": "qata-cov19 Val"}
    assert np.array_equal(read_image(folder / CHECK_SAMPLE), own[0].rgb) and CHECK_SAMPLE in manifest["files"]

    with open_runner("ort", folder, "fp16") as runner:
        check = runner.self_check
    assert check.state == "passed" and check.sample == "the export's check sample (qata-cov19 Val val_0.png)"
    assert check.figure["samples"] == ["val_0.png"] and max(check.figure["reference_foreground"]) > 0
    key = runner._self_check_plan.key["check"]
    assert key["sha256"] == manifest["files"][CHECK_SAMPLE] and key["text"] == own[0].text
    with open_runner("ort", folder, "fp16") as again:  # a cached verdict: the image is never read
        assert again.self_check.cached and "samples" not in vars(again.check_sample)

    older = tmp_path / "older"  # an export written before check samples: the built-in one
    shutil.copytree(folder, older)
    stored = json.loads((older / MANIFEST).read_text())
    del stored["check_sample"], stored["files"][CHECK_SAMPLE]
    (older / CHECK_SAMPLE).unlink()
    (older / MANIFEST).write_text(json.dumps(stored))
    with open_runner("ort", older, "fp16") as runner:
        assert runner.self_check.sample == "the built-in check sample"
        assert runner.self_check.figure["samples"] == ["synthetic_0.png"]

    (folder / CHECK_SAMPLE).write_bytes(b"not the image it was validated on")
    with pytest.raises(LGAError, match=CHECK_SAMPLE):
        open_export(folder)
