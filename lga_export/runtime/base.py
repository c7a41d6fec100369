"""The runner interface every backend implements (after Polygraphy's runners).

A runner executes the two LGA graphs by their spec names on dicts of numpy arrays. The base
class owns the activation state and checks every feed against the graph spec (names, dtypes,
ranks, dynamic sizes within their bounds) before the backend sees it, so subclasses only load
(`activate_impl`) and run (`infer_impl`). Parity and latency are computed over runners.

A runner class also declares what the rest of the code would otherwise guess from its name
(the registry, serve, `predict --ray` and lga-bench ask these, never the name): its aliases,
precisions, default device, the sources it opens, the INT8 graph it runs, how it takes a thread
count and why it cannot run here; `description()` reports what an instance really runs on as
typed fields.

Reduced precision verifies itself where it runs (`runtime/self_check.py`): a class lists the
precisions that do in `self_checked` and says what a verdict depends on (`self_check_identity`)
and where verdicts are cached (`self_check_root`); the runner factory attaches the check, and
`activate` runs it (a cached verdict is read before anything is compiled).
"""

from __future__ import annotations

import abc
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from lga_export.config import LGAConfig
from lga_export.errors import LGAError
from lga_export.contract import GraphSpec, specs_by_name


# The kinds of model source a runner opens (`Runner.sources`; `registry.source_kind` tells them apart).
EXPORT = "export"  # an export folder of lga-export onnx (manifest.json), or an ExportArtifact
ENGINES = "engines"  # an engine folder of lga-export trt (*.manifest.json)
CHECKPOINT = "checkpoint"  # an LGA checkpoint file, an in-memory model, or None (the embedded model)
# The formats of an export's INT8 image graph (`Runner.int8_format`, ExportArtifact.int8_format).
ONNX = "onnx"
OPENVINO_IR = "openvino-ir"
GRAPH_SUFFIXES = {ONNX: "onnx", OPENVINO_IR: "xml"}  # format -> the graph file's suffix (an IR has a .bin too)


@dataclass(frozen=True)
class RunnerDescription:
    """What a runner really runs on, as fields (reports read these, not `describe()`'s layout).

    `providers`: graph -> what executes it (ONNX Runtime providers, OpenVINO devices, ...);
    `precision_in_use`: what the compute really runs in (fp32 when a bf16 request fell back);
    `settings`: one line of the latency-relevant settings a CPU report shows (None: nothing to show)."""

    backend: str
    precision: str
    precision_in_use: str
    device: str
    on_cpu: bool
    providers: dict[str, list[str]] = field(default_factory=dict)
    threads: int | None = None
    fallback: str | None = None
    settings: str | None = None
    self_check: dict[str, Any] | None = None  # SelfCheck.to_dict(): whether it ran, its figure, whether cached

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunnerDescription":
        """Back from results.json; refuses a dict that lacks a field (a report of another version)."""
        names = {f.name for f in fields(cls)}
        missing = [f.name for f in fields(cls) if f.name not in data and f.default is MISSING
                   and f.default_factory is MISSING]
        if missing:
            raise LGAError(f"runner description without {missing}; rerun lga-bench with this lga-export")
        return cls(**{k: v for k, v in data.items() if k in names})


class Runner(abc.ABC):
    """activate / infer / deactivate, usable as a context manager."""

    backend: ClassVar[str] = "abstract"
    aliases: ClassVar[tuple[str, ...]] = ()  # other accepted names (`--backend openvino` is ov)
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)
    default_device: ClassVar[str] = "cpu"
    sources: ClassVar[tuple[str, ...]] = ()  # EXPORT, ENGINES, CHECKPOINT: what `from_source` opens
    # The export's INT8 graph this backend runs: its format (ONNX, OPENVINO_IR; None: no INT8 from an
    # export), its name in messages, and the `lga-export onnx --int8` methods that write it.
    int8_format: ClassVar[str | None] = None
    int8_graph: ClassVar[str] = ""
    int8_methods: ClassVar[tuple[str, ...]] = ()
    thread_option: ClassVar[str | None] = None  # the `from_source` keyword taking a thread count (None: none)
    # Reduced precisions whose first run on a machine is checked against the FP32 graphs (self_check.py).
    self_checked: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def stored_precision(cls, precision: str) -> str:
        """The precision of the export graphs that `precision` runs on (OpenVINO's bf16 reads fp32)."""
        return precision

    @classmethod
    def unavailable(cls, precision: str, device: str) -> str | None:
        """Why this backend cannot run `precision` on `device` here (None: it can), known before
        anything is loaded: a library missing, no GPU, no native BF16."""
        return None

    @classmethod
    def thread_options(cls, threads: int | None) -> dict[str, Any]:
        """The `from_source` options that give it `threads` CPU threads ({}: it takes none)."""
        return {cls.thread_option: int(threads)} if cls.thread_option and threads else {}

    @classmethod
    def options_for(cls, precision: str, *, threads: int | None = None, providers: list[str] | None = None,
                    onnx_dir: Path | None = None) -> dict[str, Any]:
        """`from_source` options for a benchmark run: the ones of these this backend takes."""
        return cls.thread_options(threads)

    @classmethod
    def verify_source(cls, source: Any, precision: str, device: str) -> None:
        """Check `source` before workers open it (serve, `predict --ray`): by default open it
        without activating, which verifies the files and loads nothing."""
        cls.from_source(source, precision=precision, device=device)

    @classmethod
    def from_source(cls, source: Any, *, precision: str = "fp32", device: str = "cpu",
                    model_digest: str | None = None, **options: Any) -> "Runner":
        raise LGAError(f"backend {cls.backend} declares no from_source; give its runner class one")

    def __init__(self, config: LGAConfig, precision: str = "fp32") -> None:
        if precision not in self.precisions:
            raise LGAError(f"backend {self.backend} runs {', '.join(self.precisions)}, not {precision}")
        self.config = config
        self.precision = precision
        self.specs: dict[str, GraphSpec] = specs_by_name(config)
        self.active = False
        self.tokenizer_dir: Path | None = None  # the artefact's tokenizer folder (tokenizer.json)
        self._model_digest: str | None = None
        self.self_check: Any = None  # self_check.SelfCheck once checked (or skipped); None: not checked
        self.requested_precision: str | None = None  # set on the FP32 runner a failed self-check fell back to
        self._self_check_plan: Any = None  # attached by the factory (self_check.attach)
        self.check_sample: Any = None  # the artefact's own self-check sample (check_sample.CheckSample); None: built-in

    def take_check_sample(self, artifact, manifest_name: str | None = None, fix: str | None = None) -> None:
        """Self-check on `artifact`'s own sample (a verified export, or an engine that carries its
        export's) when this precision checks itself; see self_check.export_check."""
        if self.precision in self.self_checked:
            from lga_export.runtime.check_sample import export_check

            self.check_sample = export_check(artifact, manifest_name, fix)

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
            plan = self._self_check_plan
            if plan is not None:
                plan.before(self)  # a cached verdict; a cached failure refuses before anything is compiled
            self.activate_impl()
            self.active = True
            if plan is not None:
                try:
                    plan.after(self)  # the check when no verdict was cached
                except BaseException:
                    self.deactivate()
                    raise
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

    def last_device_ms(self) -> float | None:
        """Device time (ms) of the last `infer`'s graph work, from CUDA events the runner recorded
        around the enqueue only - no feed checks, no host copies (None: not a GPU runner)."""
        return None

    def synchronize(self) -> None:
        """Wait for queued device work (GPU backends); latency timers call it."""

    def self_check_identity(self) -> dict[str, Any] | None:
        """What this runner's self-check verdict depends on besides the check: the graphs' sha256 at
        its precision and of the FP32 reference, the model digest, the runtime's version and the
        settings that change what is built, and `host` (CPU model and flags, or GPU name and
        compute capability). None: nothing to check (it does not compute in this precision here)."""
        return None

    def self_check_root(self) -> Path | None:
        """The folder self-check verdicts are cached in, beside the compiled models (None: not cached)."""
        return None

    def describe(self) -> dict[str, Any]:
        """What this runner really runs on, with every backend-specific detail (results.json)."""
        info: dict[str, Any] = {"backend": self.backend, "precision": self.precision}
        if self.self_check is not None:
            info["self_check"] = self.self_check.to_dict()
        if self.requested_precision is not None:
            info["requested_precision"] = self.requested_precision
        return info

    def description(self) -> RunnerDescription:
        """The typed fields every backend reports (override: what really runs, through `with_self_check`)."""
        return self.with_self_check(RunnerDescription(self.backend, self.precision, self.precision,
                                                      self.default_device, on_cpu=self.default_device == "cpu"))

    def with_self_check(self, description: RunnerDescription) -> RunnerDescription:
        """`description` with the self-check's outcome, and on the FP32 runner a failed check fell
        back to: the precision asked for, fp32 in use and why."""
        from dataclasses import replace

        if self.self_check is None:
            return description
        changes: dict[str, Any] = {"self_check": self.self_check.to_dict()}
        if self.requested_precision is not None and self.self_check.fallback:
            reasons = [r for r in (self.self_check.fallback, description.fallback) if r]
            changes.update(precision=self.requested_precision, precision_in_use="fp32", fallback="; ".join(reasons))
        return replace(description, **changes)

    @property
    def label(self) -> str:
        return f"{self.backend}-{self.precision}"

    def __enter__(self) -> "Runner":
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.deactivate()
