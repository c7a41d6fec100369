"""Refuse an export folder whose ONNX files do not match what its manifest says."""

from __future__ import annotations

from pathlib import Path

from lga_export.config import LGAConfig
from lga_export.errors import LGAError
from lga_export.export.manifest import graph_file, read_manifest
from lga_export.export.specs import graph_specs


def _graph_io(path: Path) -> dict[str, tuple]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    dims = lambda v: tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim)
    return {v.name: dims(v) for v in list(model.graph.input) + list(model.graph.output)}


def check_export(export_dir: Path, config: LGAConfig, precision: str = "fp32") -> None:
    """Every graph's static I/O sizes must equal the manifest config's (preset, widths)."""
    read_manifest(export_dir)
    for spec in graph_specs(config):
        found = _graph_io(graph_file(export_dir, spec.name, precision))
        for tensor in spec.inputs + spec.outputs:
            shape = found.get(tensor.name)
            if shape is None:
                raise LGAError(f"{export_dir}/{spec.filename(precision)}: has no {tensor.name!r}; "
                               f"the files do not belong to this manifest")
            for axis, want in enumerate(tensor.shape):
                if isinstance(want, int) and axis < len(shape) and shape[axis] != want:
                    raise LGAError(f"{export_dir}/{spec.filename(precision)}: {tensor.name} is {shape}, the manifest's "
                                   f"{config.preset} config needs {tensor.shape}; re-export with --force")
