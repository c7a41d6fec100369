"""Latency of one callable: warm-up, then per-iteration wall times bracketed by device syncs."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable

import numpy as np

from lga_export.bench.results import LatencyFigures


@dataclass(frozen=True)
class Latency:
    batch: int
    times_ms: list[float] = field(repr=False)
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    throughput: float  # images (or texts) per second at the mean latency
    device_ms: dict[str, Any] | None = None  # the runner's CUDA-event times of its enqueued graph work

    def to_dict(self) -> LatencyFigures:
        """The results.json form; its schema is `bench.results.LatencyFigures` (a test keeps the two alike)."""
        return LatencyFigures(**asdict(self))


def summarize(times_ms: list[float], batch: int) -> Latency:
    array = np.asarray(times_ms, dtype=np.float64)
    mean = float(array.mean())
    return Latency(batch, [float(t) for t in array], float(np.percentile(array, 50)), float(np.percentile(array, 90)),
                   float(np.percentile(array, 99)), mean, float(array.std()), float(array.min()), float(array.max()),
                   batch / (mean / 1000.0) if mean > 0 else float("inf"))


def measure(call: Callable[[], Any], synchronize: Callable[[], None], batch: int, warmup: int,
            iters: int, device_time: Callable[[], float | None] | None = None) -> Latency:
    """Host wall time between two synchronisations (exact on the CPU; on a GPU it includes the
    host overhead and both copies). `device_time`: a GPU runner's `last_device_ms`, read after each
    iteration - CUDA events the runner recorded around its enqueue only, summarised as `device_ms`
    (events around `call` here would time the host work too: the device-to-host copy synchronises)."""
    for _ in range(warmup):
        call()
    synchronize()
    times, device = [], []
    for _ in range(max(iters, 1)):
        synchronize()
        start = time.perf_counter()
        call()
        synchronize()
        times.append((time.perf_counter() - start) * 1000.0)
        value = device_time() if device_time is not None else None
        if value is not None:
            device.append(value)
    latency = summarize(times, batch)
    return replace(latency, device_ms=summarize(device, batch).to_dict() if device else None)
