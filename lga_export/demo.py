"""The README's main job on the embedded default model: summary, ONNX export with validation,
masks drawn by the exported graphs, and a benchmark of PyTorch against ONNX Runtime."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from PIL import Image


def run_demo(out: Path, *, force: bool = False, log: Callable[[str], None] = print) -> dict:
    from lga_export.bench import BenchSettings, run_benchmark
    from lga_export.errors import ValidationFailed
    from lga_export.export.exporter import export_onnx
    from lga_export.export.report import render_validation
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
                               drop_failing_int8=True)
        log(render_validation(manifest["validation"]))
        samples, source = validation_samples(4)
        with open_runner("ort", tmp / "onnx", model_digest=manifest["model_digest"]) as runner:
            results = Segmenter(runner).segment([s.rgb for s in samples], [s.text for s in samples])
        (tmp / "masks").mkdir()
        for sample, result in zip(samples, results):
            Image.fromarray(overlay(sample.rgb, result.mask)).save(tmp / "masks" / f"{Path(sample.name).stem}_overlay.png")
        log(f"overlays of {len(samples)} samples from {source} (ONNX Runtime FP32) in {out / 'masks'}")
        settings = BenchSettings(backends=["torch", "ort", "ov"], precisions=["fp32", "bf16", "fp16", "int8"],
                                 batches=[1], samples=8, warmup=1, iters=5, exclude=["torch-fp16"])
        try:
            run_benchmark(model, tmp / "bench", settings, onnx_dir=tmp / "onnx", log=log)
            failed = None
        except ValidationFailed as exc:  # a backend failing on this CPU is shown, not fatal (#20 item 3)
            failed = str(exc)
        log((tmp / "bench" / "report.md").read_text())
        results = json.loads((tmp / "bench" / "results.json").read_text())
        reference = results.get("reference", "torch-fp32")
        passing = [c["label"] for c in (results.get("recommendation") or {}).get("ranking", [])
                   if c.get("passed") and c["label"] != reference]
        for precision, lines in ((manifest.get("validation") or {}).get("dropped") or {}).items():
            log(f"FAIL {precision} graphs: left out of the export, failed validation: " + " | ".join(lines))
        if failed:
            log(f"failing on this CPU (shown, not fatal: lga-bench exits 3 on them): {failed}")
        if not passing:
            raise ValidationFailed(f"no CPU deployment path passed its gate: {failed or 'none ran'}")
        log(f"passing on this CPU: {', '.join(passing)}")
    return manifest
