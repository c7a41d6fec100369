"""Engine manifests: what an engine was built from and for, and the refusal to load it elsewhere.

A serialized TensorRT engine only runs on the GPU model and TensorRT version it was built
with, and silently goes stale when its ONNX changes. The checks are pure functions over the
manifest dict and the current environment dict, so they are unit-tested without a GPU.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lga_export.errors import LGAError
from lga_export.fileio import atomic_file

MANIFEST_VERSION = 1


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
        return self._path(".manifest.json")

    @property
    def layers_json(self) -> Path:
        return self._path(".layers.json")

    @property
    def layers_md(self) -> Path:
        return self._path(".layers.md")

    def all(self) -> list[Path]:
        return [self.engine, self.manifest, self.layers_json, self.layers_md]


def write_json(path: Path, data: Any, force: bool) -> None:
    """Atomic JSON write: a reader never sees half a manifest."""
    with atomic_file(path, force=force) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest beside an engine; an engine without one is refused (it may be half-built)."""
    path = Path(path)
    if not path.is_file():
        raise LGAError(f"{path} not found; an engine without its manifest is not trusted - rebuild with lga-export trt")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise LGAError(f"{path} is not valid JSON ({exc}); rebuild with lga-export trt --force") from None
    if not isinstance(data, dict) or data.get("manifest_version") != MANIFEST_VERSION:
        raise LGAError(f"{path} is not an lga-export engine manifest (version {MANIFEST_VERSION}); "
                       "rebuild with lga-export trt --force")
    return data


def incompatibility(manifest: dict[str, Any], environment: dict[str, Any],
                    current_digests: dict[str, Any] | None = None) -> str | None:
    """Why this engine must not be loaded here, in one line, or None when it may.

    `environment`: tensorrt_version, gpu_name, compute_capability of this machine.
    `current_digests`: onnx_digests() of the source ONNX as it is now, None when it is not present.
    """
    built = manifest.get("environment", {})
    name = f"{manifest.get('graph', '?')} ({manifest.get('precision', '?')})"
    for key, what in (("tensorrt_version", "TensorRT"), ("gpu_name", "GPU"),
                      ("compute_capability", "compute capability")):
        if built.get(key) != environment.get(key):
            return (f"engine {name} was built for {what} {built.get(key)!r}, this machine has "
                    f"{environment.get(key)!r}; rebuild it here with lga-export trt --force")
    if current_digests is not None:
        source = manifest.get("source", {})
        if source.get("onnx_sha256") != current_digests.get("onnx_sha256"):
            return (f"engine {name} was built from another {source.get('onnx_file', 'ONNX file')} (sha256 differs); "
                    "rebuild it with lga-export trt --force")
        if source.get("external_data_sha256", {}) != current_digests.get("external_data_sha256", {}):
            return (f"engine {name} was built from other weights of {source.get('onnx_file', 'its ONNX file')} "
                    "(external data sha256 differs); rebuild it with lga-export trt --force")
    return None


def check_compatible(manifest: dict[str, Any], environment: dict[str, Any],
                     current_digests: dict[str, Any] | None = None) -> None:
    """Raise the one-line reason from `incompatibility`, if any."""
    reason = incompatibility(manifest, environment, current_digests)
    if reason:
        raise LGAError(reason)
