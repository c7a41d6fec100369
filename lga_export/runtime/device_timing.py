"""Device time of a runner's graph work: CUDA events recorded around the enqueue only.

lga-bench's latency is host wall time around `Runner.infer`, which includes the feed checks,
the host-to-device and device-to-host copies and Python. Events recorded by the bench around
`infer` would measure all of that too (the device-to-host copy synchronises), so GPU runners
record them themselves, on the stream their graph runs on, immediately before and after
enqueueing it; the bench reads `Runner.last_device_ms()` after each iteration.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator


class EnqueueTimer:
    """One pair of CUDA events per graph run; `last_ms()` is the device time of the latest."""

    def __init__(self) -> None:
        self._events: tuple[Any, Any] | None = None

    @contextlib.contextmanager
    def around(self, stream: Any) -> Iterator[None]:
        """Record a start event on `stream`, run the enqueue, record the end event (None: no-op)."""
        if stream is None:
            yield
            return
        import torch

        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(stream)
        yield
        end.record(stream)
        self._events = (start, end)

    def last_ms(self) -> float | None:
        """Milliseconds between the last pair of events (waits for the end event), or None."""
        if self._events is None:
            return None
        start, end = self._events
        end.synchronize()
        return float(start.elapsed_time(end))
