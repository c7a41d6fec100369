"""ONNX Runtime INT8 for the CPU: dynamic quantisation of the image graph only.

Weights of MatMul/Gemm become signed 8-bit (QInt8, what ORT recommends for x86 with VNNI);
activations are quantised on the fly. Conv stays FP32 (ConvInteger is missing on some
builds) and the text graph stays FP32. The quantised graph is written into the bench's own
output so a user's export folder is never modified.
"""

from __future__ import annotations

from pathlib import Path

from lga_export.export.manifest import graph_file
from lga_export.runtime.ort_runner import OnnxRuntimeRunner

QUANTIZED_OPS = ("MatMul", "Gemm")


def quantize_image_graph(export_dir: Path, out_dir: Path, graph: str = "lga_image") -> Path:
    """Write `<graph>.int8.onnx` (single file) into `out_dir` from the export's FP32 graph."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source = graph_file(export_dir, graph, "fp32")
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{graph}.int8.onnx"
    quantize_dynamic(source, target, weight_type=QuantType.QInt8, op_types_to_quantize=list(QUANTIZED_OPS),
                     per_channel=False, reduce_range=False)
    return target


class ExplicitGraphsRunner(OnnxRuntimeRunner):
    """An ONNX Runtime runner over explicit graph files (e.g. FP32 text + INT8 image)."""

    def __init__(self, graphs: dict[str, Path], precision: str, providers: list[str] | None = None,
                 threads: int | None = None) -> None:
        super().__init__(next(iter(graphs.values())).parent, precision, providers, threads)
        self.graphs = {name: Path(path) for name, path in graphs.items()}

    def graph_path(self, graph: str) -> Path:
        return self.graphs[graph]
