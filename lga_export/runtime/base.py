"""The runner interface every backend implements (after Polygraphy's runners).

A runner executes the two LGA graphs by their spec names (`text_encoder`, `lga_image`) on
dicts of numpy arrays named as in `lga_export.export.specs`. Parity and latency are computed
over runners, so a new backend is one small file.
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np


class Runner(abc.ABC):
    """activate / infer / deactivate, usable as a context manager."""

    backend: str = "abstract"

    def __init__(self, precision: str = "fp32") -> None:
        self.precision = precision
        self.active = False

    @abc.abstractmethod
    def activate(self) -> None:
        """Load sessions / engines and allocate what inference needs."""

    @abc.abstractmethod
    def infer(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run graph `graph` ('text_encoder' or 'lga_image') and return its outputs by name."""

    def deactivate(self) -> None:
        self.active = False

    def synchronize(self) -> None:
        """Wait for queued device work (GPU backends); latency timers call it."""

    def describe(self) -> dict[str, Any]:
        """What this runner really runs on (providers in use, device, precision)."""
        return {"backend": self.backend, "precision": self.precision}

    @property
    def label(self) -> str:
        return f"{self.backend}-{self.precision}"

    def __enter__(self) -> "Runner":
        self.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.deactivate()
