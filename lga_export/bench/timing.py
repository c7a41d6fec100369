"""Latency of one callable: warm-up, then per-iteration wall times bracketed by device syncs."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(times_ms: list[float], batch: int) -> Latency:
    array = np.asarray(times_ms, dtype=np.float64)
    mean = float(array.mean())
    return Latency(batch, [float(t) for t in array], float(np.percentile(array, 50)), float(np.percentile(array, 90)),
                   float(np.percentile(array, 99)), mean, float(array.std()), float(array.min()), float(array.max()),
                   batch / (mean / 1000.0) if mean > 0 else float("inf"))


def measure(call: Callable[[], Any], synchronize: Callable[[], None], batch: int, warmup: int,
            iters: int) -> Latency:
    """Host timer between two synchronisations: exact on the CPU, and on the GPU the sync makes
    the wall time cover the queued kernels (a CUDA event pair would exclude the host overhead)."""
    for _ in range(warmup):
        call()
    synchronize()
    times = []
    for _ in range(max(iters, 1)):
        synchronize()
        start = time.perf_counter()
        call()
        synchronize()
        times.append((time.perf_counter() - start) * 1000.0)
    return summarize(times, batch)
