"""`lga-export onnx`: both graphs, optional FP16 pair, tokenizer, manifest, validation."""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path
from typing import Any, Callable

import torch

from lga_export.errors import ValidationFailed
from lga_export.export.manifest import MANIFEST, TOKENIZER_DIR, library_versions
from lga_export.export.onnx_export import DEFAULT_OPSET, check_graph, convert_to_fp16, export_graph
from lga_export.export.specs import dummy_inputs, graph_specs
from lga_export.export.validate import failure_lines, validate_export
from lga_export.export.wrappers import graph_modules
from lga_export.fileio import atomic_dir, sha256_file
from lga_export.modeling.text_encoder import load_tokenizer


def _trace_sizes(validation_batch: int) -> dict[str, int]:
    """Trace at a batch size the validation does not use, never at 1: torch.export
    specialises a dimension of size 1 into a constant."""
    return {"batch": 3 if validation_batch == 2 else 2, "sequence": 16}


def export_onnx(model, out_dir: str | Path, *, fp16: bool = False, opset: int = DEFAULT_OPSET,
                force: bool = False, validate: bool = True, validation_batch: int = 3,
                data_root: Path | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write the export folder atomically; raise ValidationFailed (nothing written) on a failed check."""
    model = model.eval().to("cpu")
    config = model.config
    precisions = ["fp32", "fp16"] if fp16 else ["fp32"]
    tokenizer = load_tokenizer(config.text_model)
    sizes = _trace_sizes(validation_batch)
    modules = graph_modules(model)
    with atomic_dir(out_dir, force=force) as tmp:
        graphs: dict[str, dict[str, Any]] = {}
        for spec in graph_specs(config):
            sample = tuple(torch.from_numpy(a) for a in dummy_inputs(spec, sizes).values())
            start = time.perf_counter()
            log(f"exporting {spec.name} (traced at batch {sizes['batch']}) ...")
            files = {"fp32": export_graph(modules[spec.name], spec, sample, tmp / spec.filename("fp32"), opset)}
            gc.collect()  # the traced program is large; free it before the next graph
            if fp16:
                log(f"converting {spec.name} to FP16 ...")
                files["fp16"] = convert_to_fp16(files["fp32"][0], tmp / spec.filename("fp16"), spec)
            graphs[spec.name] = {}
            for precision, written in files.items():
                check_graph(written[0], spec)
                graphs[spec.name][precision] = {
                    "file": written[0].name, "sha256": sha256_file(written[0]),
                    "external_data": [{"file": p.name, "sha256": sha256_file(p)} for p in written[1:]],
                    "bytes": sum(p.stat().st_size for p in written),
                }
            log(f"  {spec.name}: {time.perf_counter() - start:.1f} s, checker passed")
        tokenizer.save_pretrained(tmp / TOKENIZER_DIR)
        manifest: dict[str, Any] = {
            "format": "lga-export-onnx/1",
            "config": json.loads(config.to_json()),
            "opset": opset,
            "precisions": precisions,
            "io": {spec.name: {"inputs": [vars(t) | {"dynamic_axes": t.dynamic_axes} for t in spec.inputs],
                               "outputs": [vars(t) | {"dynamic_axes": t.dynamic_axes} for t in spec.outputs]}
                   for spec in graph_specs(config)},
            "graphs": graphs,
            "tokenizer": {"folder": TOKENIZER_DIR, "source": config.text_model,
                          "max_length": config.max_text_length},
            "traced_sizes": sizes,
            "libraries": library_versions(),
            "validation": None,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=list))
        if validate:
            log(f"validating against PyTorch at batch {validation_batch} ...")
            report = validate_export(model, tmp, tokenizer, precisions, validation_batch, data_root)
            manifest["validation"] = report
            if not report["passed"]:
                raise ValidationFailed("export failed validation, nothing written: " + " | ".join(failure_lines(report)))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=list))
    return manifest
