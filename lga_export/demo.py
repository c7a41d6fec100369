"""The README's main job on the embedded default model: summary, ONNX export with validation,
masks drawn by the exported graphs, and a benchmark of PyTorch against ONNX Runtime and OpenVINO.

The demo reports instead of failing for one backend (issue #20 item 3): it succeeds when the export
validates and at least one CPU deployment path (a backend that runs the export, on the CPU) passes
its gate; a backend that fails on this CPU - its agreement, its NaN/Inf, its self-check, or it could
not load - is shown as failing, with its figure, in the demo's headline and in the report's, never
dropped. `lga-bench` keeps its strict exit codes for CI (any failed gate exits 3).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from PIL import Image

from lga_export.errors import ValidationFailed


def demo_settings():
    """What the demo benchmarks: PyTorch FP32/BF16, ONNX Runtime FP32/FP16/INT8, OpenVINO FP32/BF16."""
    from lga_export.bench import BenchSettings

    return BenchSettings(backends=["torch", "ort", "ov"], precisions=["fp32", "bf16", "fp16", "int8"], batches=[1],
                         samples=8, warmup=1, iters=5, exclude=["torch-fp16"])


def _deployed(backend: str, precision: str | None = None) -> bool:
    """Whether a backend (at `precision`, when given: one it offers) is a deployment path: it runs an
    export or engine folder, not the PyTorch model."""
    from lga_export.runtime.base import ENGINES, EXPORT
    from lga_export.runtime.registry import runner_class

    try:
        cls = runner_class(backend)
    except Exception:  # noqa: BLE001 - a backend no longer registered: not one of ours to judge
        return False
    return bool({EXPORT, ENGINES} & set(cls.sources)) and (precision is None or precision in cls.precisions)


def deployment_paths(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every CPU deployment path the benchmark asked for: passed, failed (with the figure and the
    gate's reasons) or not run here (with the reason), in the benchmark's order."""
    from lga_export.bench.markdown_report import failing_figure
    from lga_export.runtime.base import RunnerDescription

    ranking = {c["label"]: c for c in (results.get("recommendation") or {}).get("ranking", [])}
    by_case = results["gates"].get("by_case", {})
    rows = []
    for label, case in results["cases"].items():
        if label == results["reference"] or not _deployed(case["backend"]) or \
                not RunnerDescription.from_dict(case["description"]).on_cpu:
            continue
        candidate = ranking.get(label)
        figure = failing_figure(candidate) if candidate else "-"
        if candidate:
            figure += f", end to end {candidate['end_to_end_p50_ms']:.1f} ms p50"
        failed = label in by_case or (candidate is not None and not candidate["passed"])
        rows.append({"label": label, "status": "failed" if failed else "passed", "figure": figure,
                     "reasons": by_case.get(label, [])})
    for skipped in results["skipped"]:
        label = f"{skipped['backend']}-{skipped['precision']}"
        if _deployed(skipped["backend"], skipped["precision"]):
            broke = str(skipped["reason"]).startswith("failed to load or run")
            rows.append({"label": label, "status": "failed" if broke else "not run", "figure": skipped["reason"],
                         "reasons": [skipped["reason"]] if broke else []})
    return rows


def headline(results: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """The demo's closing lines: each CPU deployment path with its figure, and the recommendation."""
    cpu = results["machine"].get("cpu", "this CPU")
    lines = [f"CPU deployment paths on {cpu}:"]
    for row in rows:
        mark = {"passed": "PASS", "failed": "FAIL", "not run": "SKIP"}[row["status"]]
        lines.append(f"  {mark} {row['label']}: {row['figure']}")
    best = (results.get("recommendation") or {}).get("best")
    if best:
        lines.append(f"recommended on this CPU: {best['backend']} {best['precision'].upper()} "
                     f"({best['end_to_end_p50_ms']:.1f} ms end to end, worst agreement {best['worst_agreement']:.4f})")
    failing = [row["label"] for row in rows if row["status"] == "failed"]
    if failing:
        lines.append(f"failing on this CPU (shown, not fatal: lga-bench exits 3 on them): {', '.join(failing)}")
    return lines


def run_demo(out: Path, *, force: bool = False, log: Callable[[str], None] = print, settings=None) -> dict:
    """Export, validate, draw masks, benchmark; returns the manifest. ValidationFailed (exit 3) when the
    export does not validate or no CPU deployment path passes its gate - after the outputs are written.
    `settings`: the benchmark's (default `demo_settings()`)."""
    from lga_export.bench import run_benchmark
    from lga_export.export.exporter import export_onnx
    from lga_export.export.validation_report import render_validation
    from lga_export.fileio import atomic_dir
    from lga_export.loading import default_checkpoint, load_model
    from lga_export.predict import overlay
    from lga_export.runtime.pipeline import Segmenter
    from lga_export.runtime.registry import open_runner
    from lga_export.samples import validation_samples
    from lga_export.summary import model_summary, render_summary

    checkpoint = default_checkpoint()
    log(f"model: {checkpoint or 'tiny preset, untrained (no embedded checkpoint in this install)'}")
    model = load_model()
    log(render_summary(model_summary(model)))
    with atomic_dir(out, force=force) as tmp:
        manifest = export_onnx(model, tmp / "onnx", fp16=True, int8=True, validation_batch=3, log=log,
                               drop_failing_reduced=True)
        log(render_validation(manifest["validation"]))
        samples, source = validation_samples(4)
        with open_runner("ort", tmp / "onnx", model_digest=manifest["model_digest"]) as runner:
            results = Segmenter(runner).segment([s.rgb for s in samples], [s.text for s in samples])
        (tmp / "masks").mkdir()
        for sample, result in zip(samples, results):
            Image.fromarray(overlay(sample.rgb, result.mask)).save(tmp / "masks" / f"{Path(sample.name).stem}_overlay.png")
        log(f"overlays of {len(samples)} samples from {source} (ONNX Runtime FP32) in {out / 'masks'}")
        bench = run_benchmark(model, tmp / "bench", settings or demo_settings(), onnx_dir=tmp / "onnx", log=log,
                              strict=False)
        log((tmp / "bench" / "report.md").read_text())
        rows = deployment_paths(bench)
        for precision, lines in ((manifest.get("validation") or {}).get("dropped") or {}).items():
            rows.append({"label": f"{precision} graph", "status": "failed", "reasons": lines,
                         "figure": "left out of the export, failed validation: " + " | ".join(lines)})
        for line in headline(bench, rows):
            log(line)
    manifest["deployment_paths"] = rows
    require_a_passing_path(rows, Path(out) / "bench" / "report.md")
    return manifest


def require_a_passing_path(rows: list[dict[str, Any]], report: Path) -> None:
    """The demo's exit rule: ValidationFailed (exit 3) unless a CPU deployment path passed its gate."""
    if any(row["status"] == "passed" for row in rows):
        return
    shown = " | ".join(f"{row['label']}: {row['figure']}" for row in rows) or "none ran"
    raise ValidationFailed(f"no CPU deployment path passed its gate (report in {report}): {shown}")
