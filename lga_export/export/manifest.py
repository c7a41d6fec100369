"""manifest.json of an export folder: what was exported, how, and how well it validated."""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from lga_export.config import LGAConfig
from lga_export.errors import LGAError

MANIFEST = "manifest.json"
TOKENIZER_DIR = "tokenizer"
_LIBRARIES = ("lga-export", "torch", "onnx", "onnxruntime", "onnxscript", "onnxconverter-common",
              "transformers", "segment-anything", "numpy")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def read_manifest(export_dir: str | Path) -> dict[str, Any]:
    path = Path(export_dir) / MANIFEST
    if not path.is_file():
        raise LGAError(f"{export_dir}: no {MANIFEST}; give a folder written by `lga-export onnx`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise LGAError(f"{path}: corrupt manifest ({exc}); re-run `lga-export onnx --force`") from exc


def manifest_config(manifest: dict[str, Any]) -> LGAConfig:
    return LGAConfig.from_json(json.dumps(manifest["config"]))


def graph_file(export_dir: str | Path, graph: str, precision: str) -> Path:
    """The ONNX file of `graph` at `precision` listed in the folder's manifest."""
    manifest = read_manifest(export_dir)
    entry = manifest.get("graphs", {}).get(graph, {}).get(precision)
    if entry is None:
        available = sorted(manifest.get("graphs", {}).get(graph, {}))
        hint = " re-export with --fp16" if precision == "fp16" else ""
        raise LGAError(f"{export_dir}: no {precision} {graph} graph (has {available});{hint}")
    path = Path(export_dir) / entry["file"]
    if not path.is_file():
        raise LGAError(f"{path}: listed in the manifest but missing; re-run `lga-export onnx --force`")
    return path
