"""INT8 image graph by ONNX Runtime's dynamic quantisation (written into the export folder).

MatMul/Gemm weights are quantised per tensor to INT8 and activations are quantised on the fly.
Conv stays FP32 (ConvInteger is missing on some builds) and the text graph stays FP32, so an
INT8 export pairs the FP32 text graph with the INT8 image graph. Dynamic-quantisation ops
(MatMulInteger, DynamicQuantizeLinear) are CPU kernels of ONNX Runtime.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

QUANTIZED_OPS = ("MatMul", "Gemm")


def quantize_dynamic_int8(source: Path, target: Path) -> dict[str, Any]:
    """Write `target` (one file) from the FP32 graph `source`; return how it was quantised."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(source, target, weight_type=QuantType.QInt8, op_types_to_quantize=list(QUANTIZED_OPS),
                     per_channel=False, reduce_range=False)
    return {"method": "onnxruntime dynamic quantisation", "weight_type": "QInt8", "activations": "QUInt8, dynamic",
            "op_types": list(QUANTIZED_OPS), "per_channel": False, "text_graph": "fp32"}
