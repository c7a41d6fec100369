"""ONNX Runtime backend over an export folder (FP32, FP16 or INT8 graphs).

onnxruntime-gpu silently falls back to the CPU when CUDA or TensorRT libraries are missing,
so the runner reports the providers each session really uses, and refuses a requested
provider that is not in use. Imports neither torch nor transformers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lga_export.config import LGAConfig
from lga_export.errors import LGAError
from lga_export.runtime.base import Runner


def onnxruntime():
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise LGAError("onnxruntime is not installed; pip install onnxruntime (or onnxruntime-gpu)") from exc
    return ort


def default_providers(device: str) -> list[str]:
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else ["CPUExecutionProvider"]


class OnnxRuntimeRunner(Runner):
    """`graphs`: graph name -> ONNX file (from a verified export folder, or staged by the exporter)."""

    backend = "ort"
    precisions = ("fp32", "fp16", "int8")

    def __init__(self, config: LGAConfig, graphs: dict[str, Path], precision: str = "fp32", *,
                 providers: list[str] | None = None, threads: int | None = None, low_memory: bool = False,
                 tokenizer_dir: Path | None = None) -> None:
        super().__init__(config, precision)
        self.graphs = {name: Path(path) for name, path in graphs.items()}
        self.requested = providers or default_providers("cpu")
        self.threads = threads
        self.low_memory = low_memory  # no CPU arena: memory goes back after each run (validation)
        self.tokenizer_dir = tokenizer_dir
        self.sessions: dict[str, Any] = {}

    @classmethod
    def from_source(cls, source: Any, *, precision: str = "fp32", device: str = "cpu",
                    model_digest: str | None = None, providers: list[str] | None = None,
                    **options: Any) -> "OnnxRuntimeRunner":
        """An export folder (path or ExportArtifact), verified before anything is loaded."""
        from lga_export.artifact import ExportArtifact, open_export

        if isinstance(source, ExportArtifact):
            artifact = source
            if model_digest is not None:
                open_export(source.folder, model_digest)
        elif isinstance(source, (str, Path)) and Path(source).is_dir():
            artifact = open_export(source, model_digest)
        else:
            raise LGAError("ONNX Runtime runs an export folder; export the model first with lga-export onnx "
                           "and pass the folder")
        graphs = {name: artifact.graph(name, precision) for name in cls.graph_names(artifact.config)}
        return cls(artifact.config, graphs, precision, providers=providers or default_providers(device),
                   tokenizer_dir=artifact.tokenizer_dir, **options)

    @staticmethod
    def graph_names(config: LGAConfig) -> list[str]:
        from lga_export.export.specs import specs_by_name

        return list(specs_by_name(config))

    def activate_impl(self) -> None:
        ort = onnxruntime()
        available = ort.get_available_providers()
        missing = [p for p in self.requested if p not in available]
        if missing:
            raise LGAError(f"ONNX Runtime providers {missing} are not available here (available: {available}); "
                           f"install onnxruntime-gpu alone (pip uninstall onnxruntime) for CUDA/TensorRT providers")
        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        if self.low_memory:
            options.enable_cpu_mem_arena = False
        for name, path in self.graphs.items():
            try:
                session = ort.InferenceSession(str(path), options, providers=self.requested)
            except Exception as exc:  # noqa: BLE001 - ORT raises its own types for unreadable graphs
                first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
                raise LGAError(f"{path}: ONNX Runtime cannot load it ({first}); re-export with lga-export onnx "
                               f"--force") from None
            self._check_session(name, path, session)
            self.sessions[name] = session
        dropped = [p for p in self.requested if p != "CPUExecutionProvider"
                   and any(p not in s.get_providers() for s in self.sessions.values())]
        if dropped:
            raise LGAError(f"ONNX Runtime was asked for {dropped} but runs without it (providers in use: "
                           f"{self.providers_in_use()}); check the CUDA libraries, or ask for CPUExecutionProvider")

    def _check_session(self, graph: str, path: Path, session: Any) -> None:
        """The graph's I/O must be the spec's (names and static sizes): catches files of another model."""
        spec = self.specs[graph]
        found = {v.name: v.shape for v in list(session.get_inputs()) + list(session.get_outputs())}
        for tensor in spec.inputs + spec.outputs:
            shape = found.get(tensor.name)
            if shape is None or len(shape) != len(tensor.shape) or any(
                    isinstance(want, int) and got != want for got, want in zip(shape, tensor.shape)):
                raise LGAError(f"{path}: {tensor.name} is {shape}, the {self.config.preset} config needs "
                               f"{tensor.shape}; the graph belongs to another model - re-export with --force")

    def deactivate_impl(self) -> None:
        self.sessions.clear()

    def tokenizer(self):
        from lga_export.tokenization import TextTokenizer

        if self.tokenizer_dir is None:
            raise LGAError("this ONNX Runtime runner was opened without a tokenizer folder")
        return TextTokenizer.from_folder(self.tokenizer_dir)

    def infer_impl(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self.sessions[graph]
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, feeds)))

    def providers_in_use(self) -> dict[str, list[str]]:
        return {graph: session.get_providers() for graph, session in self.sessions.items()}

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(onnxruntime=onnxruntime().__version__, requested_providers=self.requested,
                    providers_in_use=self.providers_in_use(), threads=self.threads,
                    graphs={name: path.name for name, path in self.graphs.items()})
        return info
