"""The runner interface every backend implements (after Polygraphy's runners).

A runner executes the two LGA graphs by their spec names on dicts of numpy arrays. The base
class owns the activation state and checks every feed against the graph spec (names, dtypes,
ranks, dynamic sizes within their bounds) before the backend sees it, so subclasses only load
(`activate_impl`) and run (`infer_impl`). Parity and latency are computed over runners.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from lga_export.config import LGAConfig
from lga_export.errors import LGAError
from lga_export.export.specs import GraphSpec, specs_by_name


class Runner(abc.ABC):
    """activate / infer / deactivate, usable as a context manager."""

    backend: ClassVar[str] = "abstract"
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)

    def __init__(self, config: LGAConfig, precision: str = "fp32") -> None:
        if precision not in self.precisions:
            raise LGAError(f"backend {self.backend} runs {', '.join(self.precisions)}, not {precision}")
        self.config = config
        self.precision = precision
        self.specs: dict[str, GraphSpec] = specs_by_name(config)
        self.active = False
        self.tokenizer_dir: Path | None = None  # the artefact's tokenizer folder (tokenizer.json)
        self._model_digest: str | None = None

    @abc.abstractmethod
    def activate_impl(self) -> None:
        """Load sessions / engines and allocate what inference needs."""

    @abc.abstractmethod
    def infer_impl(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run `graph` on feeds already checked against its spec; return its outputs by name."""

    def deactivate_impl(self) -> None:
        """Free what `activate_impl` loaded."""

    def activate(self) -> "Runner":
        if not self.active:
            self.activate_impl()
            self.active = True
        return self

    def deactivate(self) -> None:
        if self.active:
            self.deactivate_impl()
            self.active = False

    def infer(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.active:
            raise LGAError(f"the {self.label} runner is not active; use it as a context manager or call activate()")
        spec = self.specs.get(graph)
        if spec is None:
            raise LGAError(f"unknown graph {graph!r}; choose one of {', '.join(self.specs)}")
        spec.check_feeds(feeds)
        return self.infer_impl(graph, feeds)

    @property
    def model_digest(self) -> str | None:
        """Digest (config + weights) of the model this runner runs, as its artefact records it."""
        return self._model_digest

    def tokenizer(self):
        """The model's tokenizer from the artefact's tokenizer.json (no transformers needed)."""
        from lga_export.tokenization import TextTokenizer

        if self.tokenizer_dir is None:
            raise LGAError(f"the {self.label} runner was opened without a tokenizer folder")
        return TextTokenizer.from_folder(self.tokenizer_dir)

    def timing_stream(self) -> Any:
        """The CUDA stream the graphs run on, for CUDA-event timings (None: host timing only)."""
        return None

    def synchronize(self) -> None:
        """Wait for queued device work (GPU backends); latency timers call it."""

    def describe(self) -> dict[str, Any]:
        """What this runner really runs on (providers in use, device, precision)."""
        return {"backend": self.backend, "precision": self.precision}

    @property
    def label(self) -> str:
        return f"{self.backend}-{self.precision}"

    def __enter__(self) -> "Runner":
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.deactivate()
