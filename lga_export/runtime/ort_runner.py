"""ONNX Runtime backend over an export folder (FP32, FP16 or INT8 graphs).

onnxruntime-gpu silently falls back to the CPU when CUDA or TensorRT libraries are missing,
so the runner reports the providers each session really uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lga_export.errors import LGAError
from lga_export.runtime.base import Runner


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise LGAError("onnxruntime is not installed; pip install onnxruntime (or onnxruntime-gpu)") from exc
    return onnxruntime


class OnnxRuntimeRunner(Runner):
    backend = "ort"

    def __init__(self, export_dir: str | Path, precision: str = "fp32",
                 providers: list[str] | None = None, threads: int | None = None,
                 low_memory: bool = False) -> None:
        super().__init__(precision)
        self.low_memory = low_memory  # no CPU arena: memory goes back after each run (validation)
        self.export_dir = Path(export_dir)
        self.requested = providers or ["CPUExecutionProvider"]
        self.threads = threads
        self.sessions: dict[str, Any] = {}

    def graph_path(self, graph: str) -> Path:
        from lga_export.export.manifest import graph_file

        return graph_file(self.export_dir, graph, self.precision)

    def activate(self) -> None:
        ort = _onnxruntime()
        available = ort.get_available_providers()
        missing = [p for p in self.requested if p not in available]
        if missing:
            raise LGAError(f"ONNX Runtime providers {missing} are not available here (available: {available}); "
                           f"install onnxruntime-gpu for CUDA/TensorRT providers")
        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        if self.low_memory:
            options.enable_cpu_mem_arena = False
        for graph in ("text_encoder", "lga_image"):
            self.sessions[graph] = ort.InferenceSession(str(self.graph_path(graph)), options,
                                                        providers=self.requested)
        self.active = True

    def infer(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self.sessions[graph]
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, feeds)))

    def providers_in_use(self) -> dict[str, list[str]]:
        return {graph: session.get_providers() for graph, session in self.sessions.items()}

    def describe(self) -> dict[str, Any]:
        ort = _onnxruntime()
        info = super().describe()
        info.update(onnxruntime=ort.__version__, requested_providers=self.requested,
                    providers_in_use=self.providers_in_use(), threads=self.threads)
        return info

    def deactivate(self) -> None:
        self.sessions.clear()
        super().deactivate()
