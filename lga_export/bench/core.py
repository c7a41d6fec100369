"""run_benchmark: every requested backend and precision against the PyTorch FP32 reference.

Order of work: samples and reference first (parity needs them), then each case in turn:
activate, parity over all samples per batch size (this is also its first-inference check),
latency of the text graph, the image graph and end to end, memory. A case that cannot load
or run is recorded as skipped with the reason. Outputs are written atomically; failed gates
raise ValidationFailed after the outputs are in place, so CI keeps the report.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lga_export.bench.accuracy import parity_entry, run_samples
from lga_export.bench.cases import (BACKENDS, PRECISIONS, REFERENCE, Case, default_ort_providers, make_runner,
                                    parse_list, requested_cases, static_skip_reason)
from lga_export.bench.gates import check_gates
from lga_export.bench.machine import library_versions, machine_info, peak_rss_mb
from lga_export.bench.timing import measure
from lga_export.errors import LGAError, ValidationFailed
from lga_export.fileio import atomic_dir

RESULTS = "results.json"
REPORT = "report.md"


@dataclass
class BenchSettings:
    """What to run and how; the CLI options map one to one onto these fields."""

    backends: list[str] = field(default_factory=lambda: ["torch", "torch-compile", "ort", "trt"])
    precisions: list[str] = field(default_factory=lambda: ["fp32", "fp16", "bf16", "int8"])
    batches: list[int] = field(default_factory=lambda: [1, 2])
    samples: int = 8
    warmup: int = 2
    iters: int = 10
    threads: int | None = None
    data_root: Path | None = None
    engines_dir: Path | None = None
    ort_providers: list[str] | None = None
    device: str | None = None
    min_dice_agreement: float | None = None
    max_latency_ratio: float | None = None
    matmul_size: int = 2048
    exclude: list[str] = field(default_factory=list)  # case labels such as torch-fp16, listed as skipped

    def checked(self) -> "BenchSettings":
        self.backends = parse_list(self.backends, BACKENDS, "backend")
        self.precisions = parse_list(self.precisions, PRECISIONS, "precision")
        if not self.batches or any(b < 1 for b in self.batches):
            raise LGAError(f"--batch needs positive sizes, not {self.batches}")
        self.batches = sorted(set(self.batches))
        if self.samples < 1 or self.iters < 1 or self.warmup < 0:
            raise LGAError("--samples and --iters must be >= 1 and --warmup >= 0")
        if self.threads is not None and self.threads < 1:
            raise LGAError("--threads must be >= 1")
        return self


def _device(requested: str | None) -> str:
    import torch

    if requested:
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise LGAError(f"device {requested} asked for, but torch sees no CUDA GPU")
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


def _tiled(samples: list, count: int) -> list:
    """`count` samples for a latency batch, repeating the list when it is shorter."""
    return [samples[i % len(samples)] for i in range(count)]


class _Context:
    """What every case shares during one run."""

    def __init__(self, model, settings: BenchSettings, device: str, tokenizer, samples: list) -> None:
        self.model, self.settings, self.device = model, settings, device
        self.tokenizer, self.samples = tokenizer, samples
        self.reference: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.reference_latency: dict[int, dict[str, float]] = {}


def _latencies(runner, segmenter, ctx: _Context, batch: int) -> dict[str, Any]:
    from lga_export.preprocess import normalize
    from lga_export.runtime.pipeline import tokenize

    group = _tiled(ctx.samples, batch)
    config = ctx.model.config
    texts, rgbs = [s.text for s in group], [s.rgb for s in group]
    text_feeds = tokenize(ctx.tokenizer, texts, config.max_text_length)
    ref_text = ctx.reference[min(ctx.reference)][0]
    image_feeds = {"image": np.stack([normalize(rgb, config) for rgb in rgbs]),
                   "text_embedding": np.stack([ref_text[i % len(ctx.samples)] for i in range(batch)])}
    s = ctx.settings
    sync = runner.synchronize
    return {
        "text_encoder": measure(lambda: runner.infer("text_encoder", text_feeds), sync, batch, s.warmup, s.iters),
        "lga_image": measure(lambda: runner.infer("lga_image", image_feeds), sync, batch, s.warmup, s.iters),
        "end_to_end": measure(lambda: segmenter.segment(rgbs, texts), sync, batch, s.warmup, s.iters),
    }


def _run_case(case: Case, runner, ctx: _Context, progress) -> dict[str, Any]:
    """Parity and latency of one activated runner at every batch size."""
    import torch

    from lga_export.runtime.pipeline import Segmenter

    segmenter = Segmenter(runner, ctx.tokenizer, ctx.model.config)
    batches: dict[str, Any] = {}
    for batch in ctx.settings.batches:
        progress.set_postfix_str(f"{case.label} batch {batch}")
        outputs = run_samples(segmenter, ctx.samples, batch)
        if case == REFERENCE:
            ctx.reference[batch] = outputs
        reference = ctx.reference[min(ctx.reference)]
        timing = _latencies(runner, segmenter, ctx, batch)
        figures: dict[str, Any] = {"parity": parity_entry(reference, outputs, ctx.samples),
                                   "latency": {part: lat.to_dict() for part, lat in timing.items()}}
        if case == REFERENCE:
            ctx.reference_latency[batch] = {part: lat.p50_ms for part, lat in timing.items()}
        ref = ctx.reference_latency.get(batch)
        if ref:
            figures["image_latency_ratio"] = timing["lga_image"].p50_ms / ref["lga_image"]
            figures["end_to_end_latency_ratio"] = timing["end_to_end"].p50_ms / ref["end_to_end"]
        batches[str(batch)] = figures
        progress.update(1)
    entry: dict[str, Any] = {"backend": case.backend, "precision": case.precision, "runner": runner.describe(),
                             "batches": batches, "peak_rss_mb_so_far": peak_rss_mb()}
    if ctx.device.startswith("cuda"):
        entry["cuda_max_memory_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return entry


def _prepare_onnx(model, settings: BenchSettings, onnx_dir: Path | None, tmp: Path,
                  log: Callable[[str], None]) -> tuple[Path | None, str | None]:
    """The export folder to use: the user's, or a fresh export inside the bench output."""
    if "ort" not in settings.backends or onnx_dir is not None:
        return onnx_dir, None
    from lga_export.export.exporter import export_onnx

    target = tmp / "onnx"
    try:
        export_onnx(model, target, fp16="fp16" in settings.precisions, validate=False, log=log)
    except LGAError as exc:
        return None, f"ONNX export failed: {exc}"
    return target, None


def _prepare_int8(settings: BenchSettings, onnx_dir: Path | None, tmp: Path,
                  log: Callable[[str], None]) -> tuple[dict[str, Path] | None, str | None, dict[str, Any]]:
    if "ort" not in settings.backends or "int8" not in settings.precisions or onnx_dir is None:
        return None, None, {}
    from lga_export.bench.int8 import QUANTIZED_OPS, quantize_image_graph
    from lga_export.export.manifest import graph_file

    log("quantising the image graph to INT8 (ONNX Runtime dynamic quantisation) ...")
    start = time.perf_counter()
    try:
        image = quantize_image_graph(onnx_dir, tmp / "int8")
    except Exception as exc:  # noqa: BLE001 - an unsupported op or a broken graph: skip with the reason
        return None, f"INT8 quantisation failed: {_reason(exc)}", {}
    info = {"image_graph": f"int8/{image.name}", "bytes": image.stat().st_size, "weight_type": "QInt8",
            "activations": "QUInt8, dynamic", "op_types": list(QUANTIZED_OPS), "per_channel": False,
            "text_graph": "fp32", "seconds": time.perf_counter() - start}
    return {"text_encoder": graph_file(onnx_dir, "text_encoder", "fp32"), "lga_image": image}, None, info


def run_benchmark(model, out_dir: str | Path, settings: BenchSettings | None = None, *,
                  onnx_dir: str | Path | None = None, force: bool = False, log: Callable[[str], None] = print,
                  progress: bool = True) -> dict[str, Any]:
    """Benchmark `model` on every requested backend; write results.json, report.md and plots to `out_dir`.

    `onnx_dir`: an existing export folder (default: export into OUT/onnx). Returns the results;
    raises ValidationFailed after writing them when a gate fails.
    """
    import torch
    from tqdm import tqdm

    from lga_export.bench.compute import image_graph_flops, matmul_peak
    from lga_export.bench.plots import write_plots
    from lga_export.bench.report import render_report
    from lga_export.modeling.text_encoder import load_tokenizer
    from lga_export.samples import validation_samples

    settings = (settings or BenchSettings()).checked()
    device = _device(settings.device)
    threads = settings.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    settings.threads = threads
    model = model.eval()
    started = time.time()
    machine = machine_info()  # load average at the start, before our own work adds to it
    samples, source = validation_samples(settings.samples, settings.data_root)
    tokenizer = load_tokenizer(model.config.text_model)
    ort_providers = settings.ort_providers or default_ort_providers(device)
    ctx = _Context(model, settings, device, tokenizer, samples)
    with atomic_dir(out_dir, force=force) as tmp:
        onnx_path, export_problem = _prepare_onnx(model, settings, Path(onnx_dir) if onnx_dir else None, tmp, log)
        int8_graphs, int8_problem, int8_info = _prepare_int8(settings, onnx_path, tmp, log)
        log("counting image-graph FLOPs and measuring the ONNX Runtime MatMul peak ...")
        flops = image_graph_flops(model, batch=1)
        peak = matmul_peak(settings.matmul_size, threads)
        cases = requested_cases(settings.backends, settings.precisions)
        skipped: list[dict[str, str]] = []
        results_cases: dict[str, Any] = {}
        runnable = []
        for case in cases:
            reason = static_skip_reason(case, device, settings.engines_dir)
            if case.label in settings.exclude and case != REFERENCE:
                reason = "excluded with --exclude"
            if reason is None and case.backend == "ort":
                reason = export_problem or (int8_problem if case.precision == "int8" else None)
            if reason:
                skipped.append({"backend": case.backend, "precision": case.precision, "reason": reason})
            else:
                runnable.append(case)
        bar = tqdm(total=len(runnable) * len(settings.batches), desc="lga-bench", unit="case", file=sys.stderr,
                   disable=not progress)
        with bar:
            for case in runnable:
                if device.startswith("cuda"):
                    torch.cuda.reset_peak_memory_stats()
                try:
                    runner = make_runner(case, model, device, threads, onnx_path, int8_graphs,
                                         settings.engines_dir, ort_providers)
                    with runner:
                        results_cases[case.label] = _run_case(case, runner, ctx, bar)
                except KeyboardInterrupt:
                    raise
                except Exception as exc:  # noqa: BLE001 - a backend that fails here is reported, not fatal
                    if case == REFERENCE:
                        raise
                    skipped.append({"backend": case.backend, "precision": case.precision,
                                    "reason": f"failed to load or run: {_reason(exc)}"})
                    done = len(results_cases.get(case.label, {}).get("batches", {}))
                    bar.update(len(settings.batches) - done)
        results: dict[str, Any] = {
            "format": "lga-bench/1",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "seconds": time.time() - started,
            "machine": {**machine, "load_average_end": list(os.getloadavg()), "device": device},
            "libraries": library_versions(),
            "settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()},
                         "onnx_dir": str(onnx_dir) if onnx_dir else "exported into OUT/onnx",
                         "ort_providers": ort_providers, "torch_threads": torch.get_num_threads()},
            "model": {"preset_image_size": model.config.image_size, "embed_dim": model.config.embed_dim,
                      "text_model": str(model.config.text_model), "config": json.loads(model.config.to_json())},
            "samples": {"source": source, "names": [s.name for s in samples]},
            "reference": REFERENCE.label,
            "int8": int8_info,
            "compute": {"image_graph_flops": flops, "matmul_peak": peak},
            "cases": results_cases,
            "skipped": skipped,
            "peak_rss_mb": peak_rss_mb(),
        }
        _add_gflops(results)
        results["gates"] = check_gates(results, settings.min_dice_agreement, settings.max_latency_ratio)
        (tmp / RESULTS).write_text(json.dumps(results, indent=2, default=str))
        results["plots"] = write_plots(results, tmp)
        (tmp / RESULTS).write_text(json.dumps(results, indent=2, default=str))
        (tmp / REPORT).write_text(render_report(results))
    if not results["gates"]["passed"]:
        raise ValidationFailed("benchmark gates failed (report in "
                               f"{Path(out_dir) / REPORT}): " + " | ".join(results["gates"]["failures"]))
    return results


def _add_gflops(results: dict[str, Any]) -> None:
    """Achieved image-graph GFLOP/s per case and batch (FLOPs at batch 1 scale linearly with batch)."""
    flops = results["compute"]["image_graph_flops"].get("flops")
    peak = results["compute"]["matmul_peak"]["gflops_best"]
    for case in results["cases"].values():
        for batch, figures in case["batches"].items():
            if flops:
                achieved = flops * int(batch) / (figures["latency"]["lga_image"]["p50_ms"] / 1000.0) / 1e9
                figures["image_gflops"] = achieved
                figures["image_fraction_of_matmul_peak"] = achieved / peak if peak else None
