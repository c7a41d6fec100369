"""The ONNX export folder seen from the engine builder: its manifest, model config and the
graph files of one precision, read defensively (the exporter owns the format)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lga_export.config import LGAConfig
from lga_export.errors import LGAError
from lga_export.export.specs import GraphSpec, graph_specs
from lga_export.fileio import sha256_file

def read_export_manifest(onnx_dir: Path) -> dict[str, Any]:
    """The exporter's manifest.json, or a one-line error naming the fix."""
    from lga_export.export.manifest import read_manifest

    return read_manifest(onnx_dir)


def export_config(manifest: dict[str, Any]) -> LGAConfig:
    """The LGAConfig the graphs were exported from."""
    from lga_export.export.manifest import manifest_config

    return manifest_config(manifest)


def select_onnx(onnx_dir: Path, precision: str, specs: tuple[GraphSpec, ...] | None = None,
                manifest: dict[str, Any] | None = None) -> dict[str, Path]:
    """graph name -> ONNX file of `precision` (fp16: the `.fp16.onnx` graphs, built strongly typed)."""
    onnx_dir = Path(onnx_dir)
    manifest = read_export_manifest(onnx_dir) if manifest is None else manifest
    specs = graph_specs(export_config(manifest)) if specs is None else specs
    graphs = manifest.get("graphs") if isinstance(manifest.get("graphs"), dict) else {}
    chosen: dict[str, Path] = {}
    for spec in specs:
        entry = graphs.get(spec.name, {}).get(precision, {}) if isinstance(graphs.get(spec.name), dict) else {}
        name = entry.get("file") if isinstance(entry, dict) else None
        path = onnx_dir / (name or spec.filename(precision))
        if not path.is_file():
            fix = "re-export with --fp16 (lga-export onnx --fp16)" if precision == "fp16" else "re-export with lga-export onnx"
            raise LGAError(f"{path} not found ({precision} {spec.name} graph); {fix}")
        chosen[spec.name] = path
    return chosen


def external_data_files(onnx_path: Path) -> list[Path]:
    """Weight files an ONNX graph references (the dynamo exporter writes weights beside the graph)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    names: set[str] = set()
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            names.update(e.value for e in tensor.external_data if e.key == "location")
    return [onnx_path.parent / n for n in sorted(names)]


def onnx_digests(onnx_path: Path) -> dict[str, Any]:
    """sha256 of the graph file and of each external weight file, so changed weights are caught too."""
    onnx_path = Path(onnx_path)
    return {"onnx_file": onnx_path.name, "onnx_sha256": sha256_file(onnx_path),
            "external_data_sha256": {p.name: sha256_file(p) for p in external_data_files(onnx_path) if p.is_file()}}
