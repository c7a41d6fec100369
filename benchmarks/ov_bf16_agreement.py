"""How far OpenVINO BF16 moves an export's masks, and whether keeping some layers FP32 helps.

    python benchmarks/ov_bf16_agreement.py --onnx runs/onnx [--samples 8] [--keep REGEX ...] [--out F.json]

Runs the first N QaTa Val images (the built-in samples without ../shared) through the export's
image graph with OpenVINO FP32 and BF16 (batch 1, no compile cache) and prints the per-image
mask Dice agreement (logits > 0), the median latency and the compiled model's compute layers by
runtime precision. Each `--keep REGEX` (over the PyTorch module path the exporter records on
every ONNX node, e.g. `^model\\.image_encoder\\.patch_embed`) adds a BF16 run in which the
matching Convolution and MatMul layers carry OpenVINO's keep-precision runtime attribute.

How that attribute reaches the CPU plugin (OpenVINO 2026.4.1): it is a typed runtime attribute
(`ov::DisablePrecisionConversion`, written in an IR as `<attribute name="precise" version="0"/>`).
A string set from Python under its key is rejected at compile time, under the older key
`disable_fp16_compression_0` ignored; so this script writes the graph as an IR, adds the
attribute to the chosen layers in the XML and reads it back. The stem's convolutions then run in
f32; marking stage 0's MBConv convolutions as well makes compile_model fail ("object is not
initialized"), and marking every op of a scope does too.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KEEP_FP32 = {"name": "precise", "version": "0"}  # ov::DisablePrecisionConversion in an IR
MARKED_TYPES = ("Convolution", "MatMul")
COMPUTE_LAYERS = ("Convolution", "FullyConnected", "MatMul")


def marked_ir(source_xml: Path, target_xml: Path, scopes: dict[str, str], pattern: str | None) -> int:
    """Copy the IR `source_xml` to `target_xml` (sharing its weights), marking the compute layers
    whose ONNX node's module path matches `pattern`; return how many were marked."""
    tree = ET.parse(source_xml)
    marked = 0
    for layer in tree.getroot().iter("layer"):
        scope = scopes.get(layer.get("name", "").split("/")[0], "")
        if pattern and layer.get("type") in MARKED_TYPES and re.search(pattern, scope):
            info = layer.find("rt_info")
            ET.SubElement(info if info is not None else ET.SubElement(layer, "rt_info"), "attribute", KEEP_FP32)
            marked += 1
    tree.write(target_xml)
    weights = target_xml.with_suffix(".bin")
    weights.unlink(missing_ok=True)
    weights.symlink_to(source_xml.with_suffix(".bin"))
    return marked


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, required=True, help="Export folder (lga-export onnx).")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--data", type=Path, default=None, help="Data root with qata-cov19/ (default: ../shared/data).")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", action="append", default=[], help="Regex of module paths kept FP32 (repeatable).")
    parser.add_argument("--out", type=Path, help="Write the figures as JSON.")
    args = parser.parse_args()

    import onnx
    import openvino as ov

    from ablation_inputs import ablation_inputs, write_report
    from lga_export.bench.timing import measure
    from lga_export.export.kept_nodes import node_scopes
    from lga_export.runtime.host import cpu_identity
    from lga_export.runtime.openvino_runner import with_batch
    from lga_export.verify.metrics import mask_agreement

    inputs = ablation_inputs(args.onnx, args.samples, args.data)
    if inputs is None:
        return 2
    art, _, image_graph, names, where, feeds = inputs
    scopes = node_scopes(onnx.load(str(image_graph), load_external_data=False))
    core = ov.Core()
    scratch = Path(tempfile.mkdtemp(prefix="lga-ov-bf16-"))
    ov.save_model(core.read_model(str(image_graph)), str(scratch / "fp32.xml"), compress_to_fp16=False)

    def run(precision: str, pattern: str | None) -> tuple[np.ndarray, float, int, dict[str, int]]:
        marked = marked_ir(scratch / "fp32.xml", scratch / "run.xml", scopes, pattern)
        model = core.read_model(str(scratch / "run.xml"))
        with_batch(model, 1)
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY",
                                                     "INFERENCE_NUM_THREADS": args.threads})
        request = compiled.create_infer_request()
        logits = np.concatenate([request.infer(f)[compiled.output("mask_logits")].copy() for f in feeds])
        ms = measure(lambda: request.infer(feeds[0]), lambda: None, 1, 1, 5).p50_ms
        layers: Counter = Counter()
        for op in compiled.get_runtime_model().get_ops():
            info = op.get_rt_info()
            if info["layerType"].astype(str) in COMPUTE_LAYERS:
                layers[info["runtimePrecision"].astype(str)] += 1
        return logits, ms, marked, dict(layers)

    reference, ms, _, layers = run("f32", None)
    model_name, flags = cpu_identity()
    report = {"export": str(args.onnx), "preset": art.config.preset, "samples": where,
              "images": names, "cpu": model_name,
              "bf16_flags": [f for f in flags if "bf16" in f], "openvino": ov.get_version().split("-")[0],
              "threads": args.threads, "fp32_ms": round(ms, 1), "runs": []}
    print(f"{len(names)} samples from {where}; ov fp32: image graph {ms:.1f} ms, layers {layers}", flush=True)
    for pattern in [None, *args.keep]:
        try:
            logits, ms, marked, layers = run("bf16", pattern)
        except RuntimeError as exc:  # the CPU plugin refuses some marked graphs
            print(f"ov bf16 (FP32 kept: {pattern}): compile failed ({str(exc).strip().splitlines()[-1]})", flush=True)
            report["runs"].append({"keep": pattern, "error": str(exc).strip().splitlines()[-1]})
            continue
        agree = mask_agreement(reference, logits)
        report["runs"].append({"keep": pattern, "marked_layers": marked, "layers_by_precision": layers,
                               "ms": round(ms, 1), "worst": round(min(agree), 4), "mean": round(float(np.mean(agree)), 4),
                               "per_image": [round(a, 4) for a in agree]})
        print(f"ov bf16 (FP32 kept: {pattern or 'none'}; {marked} layers marked, {layers}): image graph {ms:.1f} ms, "
              f"worst {min(agree):.4f}, mean {np.mean(agree):.4f}, per image {[round(a, 3) for a in agree]}",
              flush=True)
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
