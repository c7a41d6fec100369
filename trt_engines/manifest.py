"""What is TensorRT-specific about an engine folder: its file names, the source record of the
ONNX it was built from, and the refusal to load it on another machine.

Reading and verifying manifests (format, sha256 of every listed file, paths inside the
folder, model digest) is `lga_export.artifact`'s job (`open_engine`); this module adds what
only TensorRT needs: a serialized engine runs only on the GPU model, compute capability and
TensorRT version it was built with, and goes stale when its ONNX changes. The checks are pure
functions over dicts, so they are unit-tested without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lga_export.artifact import REBUILD, REEXPORT, EngineArtifact, ExportArtifact, engine_manifest_path, open_engine
from lga_export.errors import LGAError

ENVIRONMENT_KEYS = (("tensorrt_version", "TensorRT"), ("gpu_name", "GPU"),
                    ("compute_capability", "compute capability"))


@dataclass(frozen=True)
class EngineFiles:
    """The files of one engine, all named after the graph and precision."""

    folder: Path
    graph: str
    precision: str

    def _path(self, suffix: str) -> Path:
        return Path(self.folder) / f"{self.graph}.{self.precision}{suffix}"

    @property
    def engine(self) -> Path:
        return self._path(".engine")

    @property
    def manifest(self) -> Path:
        return engine_manifest_path(Path(self.folder), self.graph, self.precision)

    @property
    def layers_json(self) -> Path:
        return self._path(".layers.json")

    @property
    def layers_md(self) -> Path:
        return self._path(".layers.md")

    def all(self) -> list[Path]:
        return [self.engine, self.manifest, self.layers_json, self.layers_md]


def source_record(export: ExportArtifact, graph: str, precision: str) -> dict[str, Any]:
    """What an engine records about its ONNX: file name and the sha256 the (verified) export
    manifest lists for it and for each external weight file, so changed weights are caught too."""
    entry = export.graph_entry(graph, precision)
    onnx_path = export.graph(graph, precision)
    files = export.manifest.get("files", {})
    relative = onnx_path.relative_to(export.folder).as_posix()
    external = [str(name) for name in entry.get("external_data", [])]
    unlisted = [name for name in (relative, *external) if not files.get(name)]
    if unlisted:
        raise LGAError(f"{export.folder}: the manifest lists no sha256 for {unlisted}; {REEXPORT}")
    return {"onnx_file": relative, "onnx_sha256": files.get(relative),
            "external_data_sha256": {name: files.get(name) for name in external},
            "opset": export.manifest.get("opset")}


def engine_label(manifest: dict[str, Any]) -> str:
    return f"{manifest.get('graph', '?')}.{manifest.get('precision', '?')}"


def environment_mismatch(manifest: dict[str, Any], environment: dict[str, Any]) -> str | None:
    """Why this engine cannot run on this machine (TensorRT version, GPU, compute capability), or None."""
    built = manifest.get("environment", {})
    for key, what in ENVIRONMENT_KEYS:
        if built.get(key) != environment.get(key):
            return (f"engine {engine_label(manifest)} was built for {what} {built.get(key)!r}, this machine has "
                    f"{environment.get(key)!r}; rebuild it here with lga-export trt --force")
    return None


def source_mismatch(manifest: dict[str, Any], expected_source: dict[str, Any]) -> str | None:
    """Why this engine was not built from the ONNX described by `expected_source`, or None."""
    name = engine_label(manifest)
    source = manifest.get("source", {})
    onnx_file = source.get("onnx_file", "its ONNX file")
    if source.get("onnx_file") != expected_source.get("onnx_file") or \
            source.get("onnx_sha256") != expected_source.get("onnx_sha256"):
        return (f"engine {name} was built from another {onnx_file} than the export's "
                f"{expected_source.get('onnx_file')} (sha256 differs); rebuild it from this export with "
                f"lga-export trt --force")
    if source.get("external_data_sha256", {}) != expected_source.get("external_data_sha256", {}):
        return (f"engine {name} was built from other weights of {onnx_file} (external data sha256 "
                f"differs); rebuild it from this export with lga-export trt --force")
    return None


def incompatibility(manifest: dict[str, Any], environment: dict[str, Any],
                    expected_source: dict[str, Any] | None = None) -> str | None:
    """Why this engine must not be loaded here, in one line, or None when it may.

    `environment`: tensorrt_version, gpu_name, compute_capability of this machine.
    `expected_source`: `source_record()` of the export the caller runs beside the engine
    (None: no export was given, so nothing is compared).
    """
    reason = environment_mismatch(manifest, environment)
    if reason is None and expected_source is not None:
        reason = source_mismatch(manifest, expected_source)
    return reason


def check_compatible(manifest: dict[str, Any], environment: dict[str, Any],
                     expected_source: dict[str, Any] | None = None) -> None:
    """Raise the one-line reason from `incompatibility`, if any."""
    reason = incompatibility(manifest, environment, expected_source)
    if reason:
        raise LGAError(reason)


def verified_engine(folder: Path, graph: str, precision: str, *, model_digest: str | None = None,
                    export: ExportArtifact | None = None) -> EngineArtifact:
    """One engine of a folder, verified by `open_engine` (files, digests, model), its recorded
    graph/precision matching its name, and, with `export`, built from that export's ONNX.
    The machine check (`check_compatible`) needs TensorRT and happens at activation."""
    folder = Path(folder)
    artifact = open_engine(folder, graph, precision, model_digest)
    path = engine_manifest_path(folder, graph, precision)
    manifest = artifact.manifest
    if manifest.get("graph") != graph or manifest.get("precision") != precision:
        raise LGAError(f"{path} describes {engine_label(manifest)}, not {graph}.{precision}; {REBUILD}")
    if artifact.engine.relative_to(folder).as_posix() not in manifest.get("files", {}):
        raise LGAError(f"{path} does not list the sha256 of its engine {manifest.get('engine')!r}; {REBUILD}")
    if export is not None:
        try:
            expected = source_record(export, graph, precision)
        except LGAError as exc:
            raise LGAError(f"engine {graph}.{precision} cannot be checked against {export.folder}: {exc}") from None
        reason = source_mismatch(manifest, expected)
        if reason:
            raise LGAError(reason)
    return artifact
