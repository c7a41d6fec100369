"""Latency of one callable: warm-up, then per-iteration wall times bracketed by device syncs."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
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
    device_ms: dict[str, Any] | None = None  # CUDA-event figures of the same iterations (GPU runners)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(times_ms: list[float], batch: int) -> Latency:
    array = np.asarray(times_ms, dtype=np.float64)
    mean = float(array.mean())
    return Latency(batch, [float(t) for t in array], float(np.percentile(array, 50)), float(np.percentile(array, 90)),
                   float(np.percentile(array, 99)), mean, float(array.std()), float(array.min()), float(array.max()),
                   batch / (mean / 1000.0) if mean > 0 else float("inf"))


def measure(call: Callable[[], Any], synchronize: Callable[[], None], batch: int, warmup: int,
            iters: int, stream: Any = None) -> Latency:
    """Host wall time between two synchronisations (exact on the CPU; on a GPU it includes the
    host overhead). With a CUDA `stream`, CUDA-event times of the work queued on it are
    recorded too, as `device_ms` (the device's own view, without host overhead)."""
    for _ in range(warmup):
        call()
    synchronize()
    times, device = [], []
    for _ in range(max(iters, 1)):
        synchronize()
        if stream is not None:
            import torch

            start_event, end_event = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start_event.record(stream)
        start = time.perf_counter()
        call()
        if stream is not None:
            end_event.record(stream)
        synchronize()
        times.append((time.perf_counter() - start) * 1000.0)
        if stream is not None:
            end_event.synchronize()
            device.append(float(start_event.elapsed_time(end_event)))
    latency = summarize(times, batch)
    return replace(latency, device_ms=summarize(device, batch).to_dict() if device else None)
