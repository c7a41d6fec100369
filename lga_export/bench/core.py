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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lga_export.bench.cases import REFERENCE, Case, export_needs, parse_list, plan_cases
from lga_export.bench.gates import check_gates
from lga_export.bench.machine import DeviceMemory, machine_info, peak_rss_mb, release_device_memory
from lga_export.bench.results import BatchFigures, BenchResults, CaseResult, Compute, GroundTruth, SkippedCase
from lga_export.bench.timing import measure
from lga_export.errors import LGAError, ValidationFailed, one_line
from lga_export.contract import IMAGE_GRAPH, PRECISIONS, TEXT_GRAPH, image_feeds, tolerance
from lga_export.fileio import atomic_dir
from lga_export.verify.metrics import score_logits
from lga_export.runtime.sample_runs import run_samples
from lga_export.verify.comparator import Outputs, compare_outputs
from lga_export.runtime.pipeline import Segmenter
from lga_export.runtime.base import CHECKPOINT, ENGINES, EXPORT, RunnerDescription
from lga_export.runtime.registry import backend_names, canonical_backend, runner_class
from lga_export.samples import check_data_root
from lga_export.versions import library_versions

RESULTS = "results.json"
REPORT = "report.md"


@dataclass
class BenchSettings:
    """What to run and how; the CLI options map one to one onto these fields."""

    backends: list[str] = field(default_factory=lambda: ["torch", "torch-compile", "ort", "ov", "trt"])  # as the CLI
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
    require_all: bool = False  # a requested case that cannot run fails the gates
    self_check: bool = True  # reduced precisions check themselves on first use here (recorded; a failure fails the gate)

    def checked(self) -> "BenchSettings":
        """A copy with canonical backend names, known precisions and sorted batch sizes; refuses
        values out of range (this object is left as it is)."""
        backends = parse_list(self.backends, backend_names(), "backend", canonical_backend)  # aliases too
        precisions = parse_list(self.precisions, PRECISIONS, "precision")
        if not self.batches or any(b < 1 for b in self.batches):
            raise LGAError(f"--batch needs positive sizes, not {self.batches}")
        if self.samples < 1 or self.iters < 1 or self.warmup < 0:
            raise LGAError("--samples and --iters must be >= 1 and --warmup >= 0")
        if self.threads is not None and self.threads < 1:
            raise LGAError("--threads must be >= 1")
        if self.matmul_size < 1:
            raise LGAError(f"--matmul-size must be at least 1, not {self.matmul_size}")
        if self.min_dice_agreement is not None and not 0.0 <= self.min_dice_agreement <= 1.0:
            raise LGAError(f"--min-dice-agreement must lie in 0..1, not {self.min_dice_agreement}")
        check_data_root(self.data_root)
        return replace(self, backends=backends, precisions=precisions, batches=sorted(set(self.batches)))


def _device(requested: str | None) -> str:
    import torch

    if requested:
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise LGAError(f"device {requested} asked for, but torch sees no CUDA GPU")
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_ort_providers(settings: BenchSettings) -> None:
    """ONNX Runtime asked for on CUDA whose CUDA provider is listed but does not load (onnxruntime-gpu
    without its CUDA/cuDNN libraries): one line before any case, not one skipped case per precision."""
    if "ort" not in settings.backends:
        return
    from lga_export.runtime.ort_runner import CUDA, cuda_provider_problem, onnxruntime, provider_names

    cuda = [p for p in settings.ort_providers or [] if provider_names([p]) == [CUDA]]
    if not cuda or CUDA not in onnxruntime().get_available_providers():
        return  # not asked for, or not there at all: each ort case is skipped with that reason
    problem = cuda_provider_problem(onnxruntime(), cuda[0])
    if problem:
        raise LGAError(problem)


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {one_line(str(exc), 300, 'first')}"


def _tiled(samples: list, count: int) -> list:
    """`count` samples for a latency batch, repeating the list when it is shorter."""
    return [samples[i % len(samples)] for i in range(count)]


class _Context:
    """What every case shares during one run."""

    def __init__(self, model, settings: BenchSettings, device: str, samples: list) -> None:
        self.model, self.settings, self.device, self.samples = model, settings, device, samples
        self.names = [s.name for s in samples]
        self.reference: dict[int, Outputs] = {}
        self.reference_latency: dict[int, dict[str, float]] = {}
        self.memory: DeviceMemory | None = None  # the running case's, on a GPU


def _latencies(runner, segmenter: Segmenter, ctx: _Context, batch: int) -> dict[str, Any]:
    group = _tiled(ctx.samples, batch)
    texts, rgbs = [s.text for s in group], [s.rgb for s in group]
    text_feeds = segmenter.text_feeds(texts)
    ref_text = ctx.reference[min(ctx.reference)].text_embedding
    feeds = image_feeds(segmenter.image_batch(rgbs), np.stack([ref_text[i % len(ctx.samples)] for i in range(batch)]))
    s, sync, device_ms = ctx.settings, runner.synchronize, runner.last_device_ms
    return {
        TEXT_GRAPH: measure(lambda: runner.infer(TEXT_GRAPH, text_feeds), sync, batch, s.warmup, s.iters, device_ms),
        IMAGE_GRAPH: measure(lambda: runner.infer(IMAGE_GRAPH, feeds), sync, batch, s.warmup, s.iters, device_ms),
        "end_to_end": measure(lambda: segmenter.segment(rgbs, texts), sync, batch, s.warmup, s.iters),
    }


def _ground_truth(logits: np.ndarray, samples: list) -> GroundTruth:
    """Mean Dice and mIoU against the labels, over the samples that have one."""
    scores = [score_logits(l, s.mask) for l, s in zip(logits, samples) if s.mask is not None]
    if not scores:
        return {"gt_samples": 0, "gt_dice": None, "gt_miou": None}
    return {"gt_samples": len(scores), "gt_dice": float(np.mean([d for d, _ in scores])),
            "gt_miou": float(np.mean([i for _, i in scores]))}


def _run_case(case: Case, runner, ctx: _Context, progress) -> CaseResult:
    """Parity (the comparator's, end to end) and latency of one activated runner at every batch size."""
    segmenter = Segmenter(runner)
    batches: dict[str, BatchFigures] = {}
    for batch in ctx.settings.batches:
        progress.set_postfix_str(f"{case.label} batch {batch}")
        outputs = run_samples(runner, ctx.samples, batch, segmenter=segmenter)
        if case == REFERENCE:
            ctx.reference[batch] = outputs
        pair = compare_outputs(ctx.reference[min(ctx.reference)], outputs, ctx.names, tolerance(case.precision),
                               (REFERENCE.label, case.label))
        if ctx.memory is not None:
            ctx.memory.sample()  # after activation and the parity run
        timing = _latencies(runner, segmenter, ctx, batch)
        if ctx.memory is not None:
            ctx.memory.sample()
        figures: BatchFigures = {"parity": pair.to_dict(), "ground_truth": _ground_truth(outputs.logits, ctx.samples),
                                 "latency": {part: lat.to_dict() for part, lat in timing.items()}}
        if case == REFERENCE:
            ctx.reference_latency[batch] = {part: lat.p50_ms for part, lat in timing.items()}
        ref = ctx.reference_latency.get(batch)
        if ref:
            figures["image_latency_ratio"] = timing[IMAGE_GRAPH].p50_ms / ref[IMAGE_GRAPH]
            figures["end_to_end_latency_ratio"] = timing["end_to_end"].p50_ms / ref["end_to_end"]
        batches[str(batch)] = figures
        progress.update(1)
    entry: CaseResult = {"backend": case.backend, "precision": case.precision, "runner": runner.describe(),
                         "description": runner.description().to_dict(), "batches": batches,
                         "peak_rss_mb_so_far": peak_rss_mb()}
    if runner.self_check is not None:  # reduced precision's check on this machine: ran, figure, cached
        entry["self_check"] = runner.self_check.to_dict()
    if ctx.memory is not None:
        entry["device_memory"] = ctx.memory.result()
    return entry


def _prepare_export(model, settings: BenchSettings, onnx_dir: Path | None, digest: str, tmp: Path,
                    log: Callable[[str], None]):
    """The verified export to run ONNX Runtime on: the user's (refused when it is another model's),
    or a fresh one inside the bench output with the precisions the requested cases need."""
    from lga_export.artifact import open_export

    if onnx_dir is not None:
        return open_export(onnx_dir, digest), None
    needed, dynamic_int8 = export_needs(settings.backends, settings.precisions, settings.exclude)
    if not needed & {"fp32", "fp16"} and not dynamic_int8:
        return None, None
    from lga_export.export.exporter import export_onnx

    try:
        export_onnx(model, tmp / "onnx", fp16="fp16" in needed, int8=dynamic_int8, validate=False, log=log)
    except LGAError as exc:
        return None, f"ONNX export failed: {exc}"
    return open_export(tmp / "onnx", digest), None


def _runner_options(case: Case, model, artifact, settings: BenchSettings, onnx_dir: Path | None) -> tuple[Any, dict]:
    """(source, options) of the runner factory for `case`: the source its class opens, the
    options it takes (threads, ONNX Runtime providers, the engines' export)."""
    cls = runner_class(case.backend)
    options = cls.options_for(case.precision, threads=settings.threads, providers=settings.ort_providers,
                              onnx_dir=onnx_dir)
    sources = {EXPORT: artifact, ENGINES: settings.engines_dir, CHECKPOINT: model}
    return next(sources[kind] for kind in cls.sources if kind in sources), options


def run_benchmark(model, out_dir: str | Path, settings: BenchSettings | None = None, *,
                  onnx_dir: str | Path | None = None, force: bool = False, log: Callable[[str], None] = print,
                  progress: bool = True, strict: bool = True) -> BenchResults:
    """Benchmark `model` on every requested backend; write results.json, report.md and plots to `out_dir`.

    `onnx_dir`: an existing export folder of this model (default: export into OUT/onnx). Returns
    the results; raises ValidationFailed after writing them when a gate fails (`strict`, lga-bench's
    exit 3; the demo passes strict=False and reads results["gates"] itself). `settings` is not
    changed: the run's own copy holds the threads and providers it resolved.
    """
    import torch

    from lga_export.checkpoint import model_digest
    from lga_export.samples import validation_samples

    settings, device = _resolved(settings)
    model = model.eval()
    onnx_dir = Path(onnx_dir) if onnx_dir else None
    started = time.time()
    machine = machine_info()  # load average at the start, before our own work adds to it
    samples, source = validation_samples(settings.samples, settings.data_root)
    digest = model_digest(model)
    ctx = _Context(model, settings, device, samples)
    with atomic_dir(out_dir, force=force) as tmp:
        artifact, export_problem = _prepare_export(model, settings, onnx_dir, digest, tmp, log)
        compute = _compute(model, settings, device, log)
        results_cases, skipped = _run_cases(ctx, artifact, export_problem, onnx_dir, digest, progress)
        results: BenchResults = {
            "format": "lga-bench/2",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "seconds": time.time() - started,
            "machine": {**machine, "load_average_end": list(os.getloadavg()), "device": device},
            "libraries": library_versions(),
            "settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()},
                         "onnx_dir": str(onnx_dir) if onnx_dir else "exported into OUT/onnx",
                         "torch_threads": torch.get_num_threads()},
            "model": {"digest": digest, "config": json.loads(model.config.to_json())},
            "samples": {"source": source, "names": ctx.names},
            "reference": REFERENCE.label,
            "int8": artifact.manifest.get("int8") if artifact else None,
            "compute": compute,
            "cases": results_cases,
            "skipped": skipped,
            "peak_rss_mb": peak_rss_mb(),
        }
        _judge_and_write(results, settings, tmp)
    if strict and not results["gates"]["passed"]:
        raise ValidationFailed("benchmark gates failed (report in "
                               f"{Path(out_dir) / REPORT}): " + " | ".join(results["gates"]["failures"]))
    return results


def _resolved(settings: BenchSettings | None) -> tuple[BenchSettings, str]:
    """(a checked copy of `settings` with the thread count and ONNX Runtime providers filled in, the
    device); sets torch's thread count."""
    import torch

    settings = (settings or BenchSettings()).checked()
    device = _device(settings.device)
    threads = settings.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    providers = settings.ort_providers
    if providers is None:
        from lga_export.runtime.ort_runner import default_providers

        providers = default_providers(device)
    settings = replace(settings, threads=threads, ort_providers=providers)
    check_ort_providers(settings)
    return settings, device


def _compute(model, settings: BenchSettings, device: str, log: Callable[[str], None]) -> Compute:
    """The yardsticks of GFLOP/s: the image graph's FLOPs and the CPU (and GPU) matmul peaks."""
    from lga_export.bench.compute import image_graph_flops, matmul_peak, torch_matmul_peak

    log("counting image-graph FLOPs and measuring the ONNX Runtime MatMul peak ...")
    flops = image_graph_flops(model, batch=1)
    peak = matmul_peak(settings.matmul_size, settings.threads)
    gpu_peak = torch_matmul_peak(device) if device.startswith("cuda") else None  # GPU cases' yardstick
    return {"image_graph_flops": flops, "matmul_peak": peak, "gpu_matmul_peak": gpu_peak}


def _run_cases(ctx: _Context, artifact, export_problem: str | None, onnx_dir: Path | None, digest: str,
               progress: bool) -> tuple[dict[str, CaseResult], list[SkippedCase]]:
    """(results by case label, skipped cases): every planned case in turn; one that fails to load or
    run is skipped with the reason (the reference's failure is raised)."""
    from tqdm import tqdm

    settings = ctx.settings
    results_cases: dict[str, CaseResult] = {}
    runnable, skipped = plan_cases(settings.backends, settings.precisions, ctx.device, artifact,
                                   settings.engines_dir, settings.exclude, export_problem)
    bar = tqdm(total=len(runnable) * len(settings.batches), desc="lga-bench", unit="case", file=sys.stderr,
               disable=not progress)
    with bar:
        for case in runnable:
            if ctx.device.startswith("cuda"):  # each case's memory above what is left before it
                release_device_memory(ctx.model)
                ctx.memory = DeviceMemory()
            try:
                _open_and_run(case, ctx, artifact, onnx_dir, digest, bar, results_cases)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001 - a backend that fails here is reported, not fatal
                if case == REFERENCE:
                    raise
                skipped.append({"backend": case.backend, "precision": case.precision,
                                "reason": f"failed to load or run: {_reason(exc)}"})
                bar.update(len(settings.batches) - len(results_cases.get(case.label, {}).get("batches", {})))
    return results_cases, skipped


def _open_and_run(case: Case, ctx: _Context, artifact, onnx_dir: Path | None, digest: str, bar,
                  results_cases: dict[str, CaseResult]) -> None:
    """Open `case`'s runner (its self-check recorded, not enforced, unless --no-self-check) and put its
    results in `results_cases` (before the runner closes)."""
    from lga_export.runtime.registry import open_runner

    source, options = _runner_options(case, ctx.model, artifact, ctx.settings, onnx_dir)
    with open_runner(case.backend, source, case.precision, ctx.device, model_digest=digest, activate=False,
                     self_check="record" if ctx.settings.self_check else "off", **options) as runner:
        results_cases[case.label] = _run_case(case, runner, ctx, bar)


def _judge_and_write(results: BenchResults, settings: BenchSettings, tmp: Path) -> None:
    """Add GFLOP/s, the recommendation, the gates and the plots to `results`; write results.json and
    report.md into `tmp` (results.json first, so a failing plot leaves the figures)."""
    from lga_export.bench.plots import write_plots
    from lga_export.bench.markdown_report import recommendation, render_report

    _add_gflops(results)
    results["recommendation"] = recommendation(results)
    results["gates"] = check_gates(results, settings.min_dice_agreement, settings.max_latency_ratio,
                                   settings.require_all)
    (tmp / RESULTS).write_text(json.dumps(results, indent=2, default=str))
    results["plots"] = write_plots(results, tmp)
    (tmp / RESULTS).write_text(json.dumps(results, indent=2, default=str))
    (tmp / REPORT).write_text(render_report(results))


def _add_gflops(results: BenchResults) -> None:
    """Achieved image-graph GFLOP/s per case and batch (FLOPs at batch 1 scale linearly with batch),
    as a fraction of the peak of where the case ran: a GPU case against the matmul peak of its
    precision measured on that GPU (none for INT8), a CPU case against ONNX Runtime's CPU MatMul."""
    flops = results["compute"]["image_graph_flops"].get("flops")
    cpu_peak = results["compute"]["matmul_peak"]["gflops_best"]
    gpu_peak = results["compute"].get("gpu_matmul_peak")
    for case in results["cases"].values():
        on_gpu = gpu_peak is not None and not RunnerDescription.from_dict(case["description"]).on_cpu
        peak = gpu_peak["gflops_best"].get(case["precision"]) if on_gpu else cpu_peak
        for batch, figures in case["batches"].items():
            if flops:
                achieved = flops * int(batch) / (figures["latency"][IMAGE_GRAPH]["p50_ms"] / 1000.0) / 1e9
                figures["image_gflops"] = achieved
                figures["image_fraction_of_matmul_peak"] = achieved / peak if peak else None
                figures["matmul_peak_of"] = f"gpu {case['precision']}" if on_gpu else "cpu fp32"
