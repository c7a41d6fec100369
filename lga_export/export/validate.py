"""Validate staged graphs against the PyTorch model on real inputs, per graph and sample.

The batch size differs from the traced one, so a batch dimension baked into a constant fails
here instead of in production. The graphs are run from the staging folder before any
manifest exists: the manifest is written once, after validation.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

from lga_export.artifact import PrecisionValidation, ValidationReport, is_openvino_ir
from lga_export.contract import tolerance
from lga_export.runtime.sample_runs import run_samples
from lga_export.verify.comparator import compare_outputs
from lga_export.runtime.ort_runner import OnnxRuntimeRunner
from lga_export.runtime.registry import open_runner
from lga_export.samples import validation_samples


def _staged_runner(config, files: dict[str, Path], precision: str, tokenizer_dir: Path):
    """ONNX Runtime for ONNX graphs, OpenVINO for an OpenVINO IR (`--int8 ov`); no caches, since
    staged files are about to move."""
    if any(is_openvino_ir(path) for path in files.values()):
        from lga_export.runtime.openvino_runner import OpenVinoRunner

        return OpenVinoRunner(config, files, precision, tokenizer_dir=tokenizer_dir, cache_dir=False)
    return OnnxRuntimeRunner(config, files, precision, low_memory=True, tokenizer_dir=tokenizer_dir)


def validate_export(model, graphs: dict[str, dict[str, Path]], tokenizer_dir: Path, batch: int,
                    data_root: Path | None = None) -> ValidationReport:
    """Figures for every precision in `graphs` (precision -> graph name -> file); `passed` is
    False when any tolerance of contract.py is missed."""
    samples, source = validation_samples(batch, data_root)
    names = [s.name for s in samples]
    with open_runner("torch", model) as reference:
        ref = run_samples(reference, samples, batch=1)  # one by one: a ViT-H batch would not fit in memory
    gc.collect()
    report: ValidationReport = {"batch": batch, "samples": names, "source": source, "results": {}, "passed": False}
    for precision, files in graphs.items():
        with _staged_runner(model.config, files, precision, tokenizer_dir) as runner:
            outputs = run_samples(runner, samples, batch, ref)
            providers = runner.providers_in_use()
        pair = compare_outputs(ref, outputs, names, tolerance(precision), ("torch-fp32", runner.label))
        report["results"][precision] = {"providers": providers, **pair.to_dict(),
                                        "reference_masks_empty": pair.end_to_end.vacuous}
    report["passed"] = all(result["passed"] for result in report["results"].values())
    return report


def failure_lines(report: ValidationReport) -> list[str]:
    """One line per precision that failed: which graph, which sample, how far off."""
    return [f"{precision}: {'; '.join(result['problems'])}" for precision, result in report["results"].items()
            if not result["passed"]]
