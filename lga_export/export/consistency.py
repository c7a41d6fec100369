"""Refuse an export folder whose ONNX files do not match what its manifest says."""

from __future__ import annotations

from pathlib import Path

from lga_export.config import LGAConfig
from lga_export.errors import LGAError
from lga_export.export.manifest import graph_file
from lga_export.export.specs import graph_specs


def _graph_io(path: Path) -> dict[str, tuple]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    dims = lambda v: tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim)
    return {v.name: dims(v) for v in list(model.graph.input) + list(model.graph.output)}


def check_export(export_dir: Path, config: LGAConfig, precision: str = "fp32") -> None:
    """Every graph's static I/O sizes must equal the manifest config's (preset, widths)."""
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


def embedding_rows(text_graph: Path) -> int | None:
    """Rows of the word-embedding table that `input_ids` index (the text model's vocabulary)."""
    import onnx

    model = onnx.load(str(text_graph))
    tables = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == "input_ids":
            table = tables.get(node.input[0])
            return int(table.dims[0]) if table is not None else None
    return None


def check_tokenizer(export_dir: Path, tokenizer, precision: str = "fp32") -> None:
    """The tokenizer must not produce ids beyond the exported text model's vocabulary."""
    rows = embedding_rows(graph_file(export_dir, "text_encoder", precision))
    if rows is not None and len(tokenizer) > rows:
        raise LGAError(f"{export_dir}/tokenizer: {len(tokenizer)} tokens, but the exported text model knows "
                       f"{rows}; the tokenizer belongs to another text model - re-export with --force")
