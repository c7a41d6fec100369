"""The layout of results.json as types: what run_benchmark writes and the report, gates, plots
and demo read.

TypedDicts, not dataclasses: the results stay the plain dict that is written and read back, so
results.json keeps its keys and order, while a type checker knows every key the readers use.
`total=False` marks keys that are present only sometimes (a GPU run, a case with a reference
latency, a reduced precision's self-check).
"""

from __future__ import annotations

from typing import Any, TypedDict


class LatencyFigures(TypedDict):
    """`bench.timing.Latency.to_dict()`: one part's timing at one batch size."""

    batch: int
    times_ms: list[float]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    throughput: float
    device_ms: dict[str, Any] | None


class PartParity(TypedDict):
    """`parity.Parity.to_dict()`: one output of a candidate against the reference."""

    max_abs_diff: float
    nonfinite: int
    dice_mean: float | None
    dice_p5: float | None
    dice_worst: float | None
    worst_sample: str | None
    per_sample_dice: list[float]
    reference_foreground: list[float]


# `PairParity.to_dict()`: reference, candidate, passed, problems, atol, min_dice, and one PartParity
# per part (the text graph, the image graph when compared alone, end_to_end), keyed by the graph names.
PairParityFigures = dict[str, Any]


class GroundTruth(TypedDict):
    """Mean Dice and mIoU against the labels, over the samples that have one."""

    gt_samples: int
    gt_dice: float | None
    gt_miou: float | None


class BatchFigures(TypedDict, total=False):
    """One case at one batch size. Always: parity, ground_truth, latency (by part: the graph names
    and end_to_end); the ratios only when the reference ran; the GFLOP/s figures when FLOPs were counted."""

    parity: PairParityFigures
    ground_truth: GroundTruth
    latency: dict[str, LatencyFigures]
    image_latency_ratio: float
    end_to_end_latency_ratio: float
    image_gflops: float
    image_fraction_of_matmul_peak: float | None
    matmul_peak_of: str


class _CaseRequired(TypedDict):
    backend: str
    precision: str
    runner: dict[str, Any]  # the runner's describe(): free-form, shown as is
    description: dict[str, Any]  # RunnerDescription.to_dict(): read back with RunnerDescription.from_dict
    batches: dict[str, BatchFigures]  # batch size as text -> figures
    peak_rss_mb_so_far: float


class CaseResult(_CaseRequired, total=False):
    """One backend and precision that ran."""

    self_check: dict[str, Any]  # SelfCheck.to_dict(), reduced precisions only
    device_memory: dict[str, float | str]  # DeviceMemory.result(), GPU runs only


class SkippedCase(TypedDict):
    """A requested case that did not run, and why."""

    backend: str
    precision: str
    reason: str


class Compute(TypedDict):
    """The yardsticks of GFLOP/s: bench.compute's image_graph_flops, matmul_peak, torch_matmul_peak."""

    image_graph_flops: dict[str, Any]
    matmul_peak: dict[str, Any]
    gpu_matmul_peak: dict[str, Any] | None


class Ratios(TypedDict):
    end_to_end: float
    image_graph: float


class RankedCase(TypedDict):
    """A CPU case in the recommendation's ranking."""

    label: str
    end_to_end_p50_ms: float
    image_p50_ms: float
    worst_agreement: float | None
    gate: float
    nonfinite: int
    self_check_failed: bool
    passed: bool


class Candidate(RankedCase, total=False):
    """A ranked CPU case with what the recommendation says of it; the best one gets the ratios."""

    backend: str
    precision: str
    batch: int
    vs_torch_fp32: Ratios | None
    vs_ort_fp32: Ratios | None


class Recommendation(TypedDict):
    basis: str
    batch: int
    best: Candidate | None
    ranking: list[RankedCase]


class Gates(TypedDict):
    """bench.gates.check_gates: thresholds used, one line per failure, and the failures by case."""

    min_dice_agreement: dict[str, float]
    max_latency_ratio: float | None
    require_all: bool
    failures: list[str]
    by_case: dict[str, list[str]]
    passed: bool


class _ResultsRequired(TypedDict):
    format: str
    created: str
    seconds: float
    machine: dict[str, Any]  # bench.machine.machine_info() + load_average_end, device
    libraries: dict[str, Any]
    settings: dict[str, Any]  # BenchSettings as JSON + onnx_dir, torch_threads
    model: dict[str, Any]  # digest, config
    samples: dict[str, Any]  # source, names
    reference: str
    int8: dict[str, Any] | None
    compute: Compute
    cases: dict[str, CaseResult]  # by case label (backend-precision)
    skipped: list[SkippedCase]
    peak_rss_mb: float


class BenchResults(_ResultsRequired, total=False):
    """results.json. recommendation and gates are added once every case ran, plots last."""

    recommendation: Recommendation | None
    gates: Gates
    plots: list[str]
