"""Backend name -> runner class, and the one factory that opens a runner for a model source.

Adding a backend is one module with a Runner subclass (its `from_source` classmethod and its
declarations: aliases, precisions, sources, INT8 graph, thread option, `unavailable`) and one
line in RUNNERS here, or a `register(cls)` call. Built-in classes are named by import path, so
opening an ONNX Runtime runner never imports torch and TensorRT is imported only by its own
runner. Everything that picks or plans a backend (predict, serve, `predict --ray`, lga-bench)
asks this module and the classes' declarations; none compares backend names.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lga_export.artifact import MANIFEST
from lga_export.errors import LGAError
from lga_export.runtime.base import CHECKPOINT, ENGINES, EXPORT, Runner

RUNNERS: dict[str, str | type[Runner]] = {
    "torch": "lga_export.runtime.torch_runner:TorchRunner",
    "torch-compile": "lga_export.runtime.torch_runner:CompiledTorchRunner",
    "ort": "lga_export.runtime.ort_runner:OnnxRuntimeRunner",
    "ov": "lga_export.runtime.openvino_runner:OpenVinoRunner",
    "trt": "lga_export.trt_engines.runner:TensorRTRunner",
}


def register(runner: type[Runner] | str, name: str | None = None) -> str:
    """Add a backend: a Runner subclass (named by its `backend`), or an import path
    "module:Class" with its `name` (imported on first use). Returns the name."""
    if isinstance(runner, str):
        if not name or ":" not in runner:
            raise LGAError(f"register({runner!r}) needs 'module:Class' and the backend name")
    else:
        name = name or runner.backend
    key = name.strip().lower()
    taken = [n for n in (key, *(() if isinstance(runner, str) else vars(runner).get("aliases", ())))
             if n.lower() in RUNNERS or n.lower() in _aliases()]
    if taken:
        raise LGAError(f"backend name or alias {taken[0]!r} is already registered; pick another or unregister it first")
    RUNNERS[key] = runner
    return key


def unregister(name: str) -> None:
    """Remove a backend added with `register` (tests add throwaway ones)."""
    RUNNERS.pop(canonical_backend(name), None)


def backend_names() -> tuple[str, ...]:
    """Every registered backend's name, in registration order."""
    return tuple(RUNNERS)


def _load(target: str | type[Runner]) -> type[Runner]:
    if not isinstance(target, str):
        return target
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def _importable() -> Iterator[tuple[str, type[Runner]]]:
    """(name, class) of every registered backend whose module imports here, in order: a lean
    install without torch still resolves the others."""
    for name, target in list(RUNNERS.items()):
        try:
            yield name, _load(target)
        except ImportError:
            continue


def _aliases() -> dict[str, str]:
    """Alias -> name, from the classes that import here (one that does not has no aliases). Only
    a class's own aliases count (a subclass does not inherit its parent's); the first registered wins."""
    found: dict[str, str] = {}
    for name, cls in _importable():
        for alias in vars(cls).get("aliases", ()):
            found.setdefault(alias.lower(), name)
    return found


def canonical_backend(backend: str) -> str:
    """The registered name of `backend` or of the backend that declares it as an alias
    (`openvino` -> `ov`); an unknown name comes back lower-cased for the caller to refuse."""
    key = backend.strip().lower()
    return key if key in RUNNERS else _aliases().get(key, key)


def runner_class(backend: str) -> type[Runner]:
    target = RUNNERS.get(canonical_backend(backend))
    if target is None:
        aliases = sorted(_aliases())
        raise LGAError(f"unknown backend {backend!r}; choose one of {', '.join(RUNNERS)}"
                       f"{' (or ' + ', '.join(aliases) + ')' if aliases else ''}")
    return _load(target)


def source_kind(source: Any) -> str:
    """EXPORT for an export folder or ExportArtifact, ENGINES for an engine folder, CHECKPOINT
    for a checkpoint file, a model or None (the embedded default)."""
    if isinstance(source, (str, Path)) and Path(source).is_dir():
        folder = Path(source)
        if (folder / MANIFEST).is_file():
            return EXPORT
        if any(folder.glob("*.manifest.json")):
            return ENGINES
        raise LGAError(f"{folder}: neither an export folder ({MANIFEST}) nor an engine folder "
                       f"(*.manifest.json); give one written by lga-export onnx or lga-export trt")
    if hasattr(source, "folder") and hasattr(source, "manifest"):  # an ExportArtifact
        return EXPORT
    return CHECKPOINT


def default_backend(source: Any) -> str:
    """The backend a model source runs on by default: the first registered one that opens its
    kind (ONNX Runtime for an export folder, TensorRT for an engine folder, PyTorch otherwise)."""
    kind = source_kind(source)
    for name, cls in _importable():
        if kind in cls.sources:
            return name
    raise LGAError(f"no registered backend opens a {kind} source; register one that declares it")


def int8_backend(artifact: Any) -> str | None:
    """The backend that runs an export's INT8 graph: the first registered one whose INT8 graph
    format is the export's (ov for `--int8 ov`, ort for `--int8 dynamic|static`); None without one."""
    fmt = artifact.int8_format
    return next((name for name, cls in _importable() if fmt is not None and cls.int8_format == fmt), None)


def int8_format_of(method: str) -> str:
    """The format of the INT8 graph `lga-export onnx --int8 METHOD` writes: the one of the
    backend that declares the method (onnx for dynamic and static, openvino-ir for ov)."""
    for _, cls in _importable():
        if method in cls.int8_methods and cls.int8_format:
            return cls.int8_format
    known = sorted({m for _, cls in _importable() for m in cls.int8_methods})
    raise LGAError(f"no backend runs the INT8 graph of --int8 {method}; choose one of {', '.join(known)}")


def unavailable(backend: str, precision: str, device: str) -> str | None:
    """Why `backend` cannot run `precision` on `device` here (None: it can)."""
    cls = runner_class(backend)
    if precision not in cls.precisions:
        return f"backend {cls.backend} has no {precision} path (it runs {cls.precisions})"
    return cls.unavailable(precision, device)


def thread_options(backend: str, threads: int | None) -> dict[str, Any]:
    """The options that give `backend`'s runner `threads` CPU threads ({} when it takes none)."""
    return runner_class(backend).thread_options(threads)


@dataclass(frozen=True)
class Resolved:
    """What `open_runner` opens: the backend's name, the device, the source (an ExportArtifact
    once verified for the INT8 default) and the digest still to check (None once checked)."""

    backend: str
    device: str
    source: Any
    model_digest: str | None


def resolve(backend: str | None, source: Any = None, precision: str = "fp32", device: str | None = None,
            model_digest: str | None = None) -> Resolved:
    """The one defaulting rule of predict, serve, `predict --ray` and lga-bench: aliases
    resolved; without a backend, INT8 of an export runs on the backend its INT8 graph was made
    for, anything else on the source's default backend; the device defaults to the backend's."""
    name = canonical_backend(backend) if backend else None
    if name is None and precision == "int8" and source_kind(source) == EXPORT:
        from lga_export.artifact import export_of

        source = export_of(source, model_digest)  # verified once here, handed on as it is
        name, model_digest = int8_backend(source) or default_backend(source), None
    name = name or default_backend(source)
    return Resolved(name, device or runner_class(name).default_device, source, model_digest)


def open_runner(backend: str | None, source: Any = None, precision: str = "fp32", device: str | None = None, *,
                model_digest: str | None = None, activate: bool = True, self_check: str = "refuse",
                **options: Any) -> Runner:
    """An (activated) runner of `backend` over `source`: a model, a checkpoint path, an export
    folder (or ExportArtifact), an engine folder, or None for the embedded default model.

    `model_digest`: refuse an artefact of another model (the caller holds the model). Without a
    backend, INT8 runs on the backend the export's INT8 graph was made for (ov for `--int8 ov`).

    `self_check`: what the first run of a reduced precision on this machine does when the class
    declares it self-checked (`runtime/self_check.py`): 'refuse' (the default: the caller asked for
    this precision; a failure is ValidationFailed), 'fallback' (the FP32 runner of the same source
    comes back instead, saying so; needs activate=True, else a failure refuses), 'record' (lga-bench:
    recorded, the runner kept) or 'off' (--no-self-check). The check runs when the runner activates.
    """
    from lga_export.runtime import self_check as checks

    chosen = resolve(backend, source, precision, device, model_digest)
    cls = runner_class(chosen.backend)
    runner = cls.from_source(chosen.source, precision=precision, device=chosen.device,
                             model_digest=chosen.model_digest, **options)

    def reference() -> Runner:  # the FP32 graphs of the same source, opened the same way (already verified)
        return cls.from_source(chosen.source, precision="fp32", device=chosen.device, **options)

    checks.attach(runner, self_check, reference)
    return checks.open_checked(runner, activate)
