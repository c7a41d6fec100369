"""Backend name -> runner class, and the one factory that opens a runner for a model source.

Adding a backend is one module with a Runner subclass (with a `from_source` classmethod) and
one line here. Classes are named by import path, so opening an ONNX Runtime runner never
imports torch and TensorRT is imported only by its own runner.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from lga_export.artifact import MANIFEST
from lga_export.errors import LGAError
from lga_export.runtime.base import Runner

RUNNERS: dict[str, str] = {
    "torch": "lga_export.runtime.torch_runner:TorchRunner",
    "torch-compile": "lga_export.runtime.torch_runner:CompiledTorchRunner",
    "ort": "lga_export.runtime.ort_runner:OnnxRuntimeRunner",
    "ov": "lga_export.runtime.openvino_runner:OpenVinoRunner",
    "trt": "lga_export.trt_engines.runner:TensorRTRunner",
}


# Library names accepted for the short backend names (`--backend openvino` is `--backend ov`).
ALIASES: dict[str, str] = {"pytorch": "torch", "onnxruntime": "ort", "openvino": "ov", "tensorrt": "trt"}


def canonical_backend(backend: str) -> str:
    return ALIASES.get(backend.strip().lower(), backend.strip().lower())


def runner_class(backend: str) -> type[Runner]:
    target = RUNNERS.get(canonical_backend(backend))
    if target is None:
        raise LGAError(f"unknown backend {backend!r}; choose one of {', '.join(RUNNERS)} (or openvino, onnxruntime, "
                       f"tensorrt, pytorch)")
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def default_backend(source: Any) -> str:
    """The backend a model source runs on by default: ONNX Runtime for an export folder,
    TensorRT for an engine folder, PyTorch for a checkpoint, a model or the embedded default."""
    if isinstance(source, (str, Path)) and Path(source).is_dir():
        folder = Path(source)
        if (folder / MANIFEST).is_file():
            return "ort"
        if any(folder.glob("*.manifest.json")):
            return "trt"
        raise LGAError(f"{folder}: neither an export folder ({MANIFEST}) nor an engine folder "
                       f"(*.manifest.json); give one written by lga-export onnx or lga-export trt")
    if hasattr(source, "folder") and hasattr(source, "manifest"):  # an ExportArtifact
        return "ort"
    return "torch"


def open_runner(backend: str | None, source: Any = None, precision: str = "fp32", device: str | None = None, *,
                model_digest: str | None = None, activate: bool = True, **options: Any) -> Runner:
    """An (activated) runner of `backend` over `source`: a model, a checkpoint path, an export
    folder (or ExportArtifact), an engine folder, or None for the embedded default model.

    `model_digest`: refuse an artefact of another model (the caller holds the model). Without a
    backend, INT8 runs on the backend the export's INT8 graph was made for (ov for `--int8 ov`).
    """
    backend = canonical_backend(backend) if backend else None
    if backend is None and precision == "int8" and default_backend(source) == "ort":
        from lga_export.artifact import export_of

        source = export_of(source, model_digest)  # verified once here, handed on as it is
        backend, model_digest = source.int8_backend or "ort", None
    backend = backend or default_backend(source)
    device = device or ("cuda" if backend == "trt" else "cpu")
    runner = runner_class(backend).from_source(source, precision=precision, device=device,
                                               model_digest=model_digest, **options)
    return runner.activate() if activate else runner
