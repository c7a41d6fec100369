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


def library_versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Installed versions of the libraries that shape an export or a measurement."""
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES + tuple(extra):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def read_manifest(export_dir: str | Path) -> dict[str, Any]:
    """The export folder's manifest, or a one-line error naming the fix."""
    path = Path(export_dir) / MANIFEST
    if not path.is_file():
        raise LGAError(f"{path} not found; export first with: lga-export onnx --out {export_dir}")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise LGAError(f"{path} is not valid JSON ({exc}); re-export with lga-export onnx --force") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("config"), dict):
        raise LGAError(f"{path} has no model config; re-export with lga-export onnx --force")
    return manifest


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
