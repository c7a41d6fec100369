"""`lga-export onnx`: both graphs, optional FP16 and INT8 graphs, tokenizer, validation, then
the manifest, written once, listing every file's sha256 and the model's digest."""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path
from typing import Any, Callable

import torch

from lga_export.artifact import (CHECK_SAMPLE, EXPORT_FORMAT, MANIFEST, TOKENIZER_DIR, ExportManifest, GraphEntry, file_digests,
                                  is_openvino_ir)
from lga_export.checkpoint import model_digest
from lga_export.errors import LGAError, ValidationFailed
from lga_export.export.onnx_export import DEFAULT_OPSET, check_graph, check_opset, convert_to_fp16, export_graph
from lga_export.export.quantize import CALIBRATION_SAMPLES, int8_filename, int8_method, quantize_int8
from lga_export.contract import IMAGE_GRAPH, TEXT_GRAPH, dummy_inputs, graph_specs
from lga_export.export.validate import ValidationReport, failure_lines, validate_export
from lga_export.modeling.graphs import graph_modules
from lga_export.fileio import atomic_dir
from lga_export.versions import library_versions
from lga_export.modeling.text_encoder import load_tokenizer
from lga_export.samples import check_data_root, validation_set


def _trace_sizes(validation_batch: int) -> dict[str, int]:
    """Trace at a batch size the validation does not use, never at 1: torch.export
    specialises a dimension of size 1 into a constant."""
    return {"batch": 3 if validation_batch == 2 else 2, "sequence": 16}


def _entry(files: list[Path]) -> GraphEntry:
    return {"file": files[0].name, "external_data": [p.name for p in files[1:]],
            "bytes": sum(p.stat().st_size for p in files)}


def export_onnx(model, out_dir: str | Path, *, fp16: bool = False, int8: bool | str = False,
                opset: int = DEFAULT_OPSET, force: bool = False, validate: bool = True, validation_batch: int = 3,
                data_root: Path | None = None, calibration_samples: int = CALIBRATION_SAMPLES,
                log: Callable[[str], None] = print, drop_failing_reduced: bool = False) -> ExportManifest:
    """Write the export folder atomically; raise ValidationFailed (nothing written) on a failed check.

    `int8`: False, True (the default method), 'dynamic', 'static' or 'ov' (both calibrated on
    `calibration_samples` training images of `data_root`; see export/quantize.py).
    `drop_failing_reduced`: when FP32 passes, leave every reduced-precision graph set that fails (INT8,
    FP16) out of the folder and record why (`validation["dropped"]`) instead of failing the export
    (the demo: such a graph is a deployment path that fails on this model, shown, not fatal)."""
    int8_kind = int8_method(int8, calibration_samples)
    check_opset(opset)
    check_data_root(data_root)
    if validation_batch < 1:
        raise LGAError(f"--validation-batch must be at least 1, not {validation_batch}")
    model = model.eval().to("cpu")
    config = model.config
    digest = model_digest(model)
    tokenizer = load_tokenizer(config.text_model)
    sizes = _trace_sizes(validation_batch)
    with atomic_dir(out_dir, force=force) as tmp:
        files = _export_graphs(model, sizes, opset, fp16, tmp, log)
        tokenizer.save_pretrained(tmp / TOKENIZER_DIR)
        quantization = None
        if int8_kind:
            quantization = _add_int8(int8_kind, files, config, tmp, data_root, calibration_samples, log)
        validation = None
        if validate:
            validation = _validated(model, files, tmp, validation_batch, data_root, drop_failing_reduced, log)
        manifest: ExportManifest = {
            "format": EXPORT_FORMAT,
            "config": json.loads(config.to_json()),
            "model_digest": digest,
            "opset": opset,
            "precisions": list(files),
            "io": {spec.name: {"inputs": [vars(t) | {"dynamic_axes": t.dynamic_axes} for t in spec.inputs],
                               "outputs": [vars(t) | {"dynamic_axes": t.dynamic_axes} for t in spec.outputs]}
                   for spec in graph_specs(config)},
            "graphs": {spec.name: {precision: _entry(by_graph[spec.name]) for precision, by_graph in files.items()}
                       for spec in graph_specs(config)},
            "int8": quantization,
            "tokenizer": {"folder": TOKENIZER_DIR, "source": config.text_model, "max_length": config.max_text_length},
            "traced_sizes": sizes,
            "libraries": library_versions(),
            "validation": validation,
            "check_sample": _write_check_sample(tmp, data_root),
            "files": file_digests(tmp),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=list))
    return manifest


def _write_check_sample(tmp: Path, data_root: Path | None) -> dict[str, str]:
    """The first validation image and its report, for the runtime self-check on each machine
    (runtime/self_check.py): a model trained on X-rays is checked on one of its X-rays."""
    from PIL import Image

    samples, kind, _ = validation_set(1, data_root)
    Image.fromarray(samples[0].rgb).save(tmp / CHECK_SAMPLE)
    return {"file": CHECK_SAMPLE, "name": samples[0].name, "text": samples[0].text, "source": kind}


def _export_graphs(model, sizes: dict[str, int], opset: int, fp16: bool, tmp: Path,
                   log: Callable[[str], None]) -> dict[str, dict[str, list[Path]]]:
    """Both graphs traced to ONNX in `tmp` (and converted to FP16 with `fp16`), each checked:
    precision -> graph name -> its files (the graph first, then its external data)."""
    config = model.config
    modules = graph_modules(model)
    files: dict[str, dict[str, list[Path]]] = {"fp32": {}, **({"fp16": {}} if fp16 else {})}
    for spec in graph_specs(config):
        sample = tuple(torch.from_numpy(a) for a in dummy_inputs(spec, sizes).values())
        start = time.perf_counter()
        log(f"exporting {spec.name} (traced at batch {sizes['batch']}) ...")
        files["fp32"][spec.name] = export_graph(modules[spec.name], spec, sample, tmp / spec.filename("fp32"), opset)
        gc.collect()  # the traced program is large; free it before the next graph
        if fp16:
            log(f"converting {spec.name} to FP16 ...")
            files["fp16"][spec.name] = convert_to_fp16(files["fp32"][spec.name][0], tmp / spec.filename("fp16"), spec, config.family)
        for precision in files:
            check_graph(files[precision][spec.name][0], spec)
        log(f"  {spec.name}: {time.perf_counter() - start:.1f} s, checker passed")
    return files


def _add_int8(int8_kind: str, files: dict[str, dict[str, list[Path]]], config, tmp: Path, data_root: Path | None,
              calibration_samples: int, log: Callable[[str], None]) -> dict[str, Any] | None:
    """Quantize the FP32 image graph by `int8_kind` and add the INT8 set to `files` (its text graph is
    the FP32 one); returns what the quantizer recorded for the manifest."""
    image_spec = graph_specs(config)[1]
    target = tmp / int8_filename(int8_kind, image_spec.name)
    quantization = quantize_int8(int8_kind, files["fp32"][IMAGE_GRAPH][0], target, config=config,
                                 text_graph=files["fp32"][TEXT_GRAPH][0], tokenizer_dir=tmp / TOKENIZER_DIR,
                                 data_root=data_root, count=calibration_samples, log=log)
    weights = [target.with_suffix(".bin")] if is_openvino_ir(target) else []  # an OpenVINO IR's weights
    files["int8"] = {TEXT_GRAPH: files["fp32"][TEXT_GRAPH], IMAGE_GRAPH: [target, *weights]}
    return quantization


def _validated(model, files: dict[str, dict[str, list[Path]]], tmp: Path, validation_batch: int,
               data_root: Path | None, drop_failing_reduced: bool, log: Callable[[str], None]) -> ValidationReport:
    """The validation report of every graph set against PyTorch; raises ValidationFailed when it fails
    (after dropping failing reduced sets with `drop_failing_reduced`)."""
    log(f"validating against PyTorch at batch {validation_batch} ...")
    graphs = {precision: {name: paths[0] for name, paths in by_graph.items()} for precision, by_graph in files.items()}
    validation = validate_export(model, graphs, tmp / TOKENIZER_DIR, validation_batch, data_root)
    if drop_failing_reduced and validation["results"]["fp32"]["passed"]:
        _drop_failing_reduced(validation, files, log)
    if not validation["passed"]:
        raise ValidationFailed("export failed validation, nothing written: " + " | ".join(failure_lines(validation)))
    return validation


def _drop_failing_reduced(validation: ValidationReport, files: dict[str, dict[str, list[Path]]],
                          log: Callable[[str], None]) -> None:
    """Leave out every reduced-precision graph set that failed validation (FP32 passed), deleting
    only its own files (an INT8 set shares the FP32 text graph), and record why."""
    kept = {path for paths in files["fp32"].values() for path in paths}
    for precision, result in list(validation["results"].items()):
        if precision == "fp32" or result["passed"]:
            continue
        validation.setdefault("dropped", {})[precision] = [f"{precision}: {'; '.join(result['problems'])}"]
        for paths in files.pop(precision).values():
            for path in paths:
                if path not in kept and path.exists():
                    path.unlink()
        del validation["results"][precision]
        log(f"left the {precision} graphs out: " + " | ".join(validation["dropped"][precision]))
    validation["passed"] = all(result["passed"] for result in validation["results"].values())
