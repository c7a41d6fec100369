"""INT8 image graphs for the CPU, written into the export folder beside the FP32 graphs.

Three methods (`lga-export onnx --int8 dynamic|static|ov`):

- **dynamic** (the default): ONNX Runtime's dynamic quantisation of the weight MatMuls/Gemms
  (INT8 weights per tensor, or per output channel where the family declares it:
  `FamilySpec.dynamic_int8_per_channel`; activations quantised on the fly per run; the family's
  `dynamic_int8_fp32_scopes` stay FP32); no calibration data.
- **static**: ONNX Runtime's `quantize_static`, QDQ format, weights INT8 per channel,
  activations UINT8 with MinMax ranges calibrated on real QaTa-COV19 *training* images and
  their reports, preprocessed exactly as the pipeline does (`Segmenter.image_batch`; the
  text-embedding input is the FP32 text graph's output on the matching report). Without the
  shared data it calibrates on built-in synthetic images (another seed than validation's) and
  the manifest says so. Nodes whose quantisation measurably hurt mask agreement stay FP32:
  attention's activation x activation MatMuls, and the modules the model family declares
  (`FamilySpec.int8_fp32_scopes`, chosen by the PyTorch module path the exporter keeps on every
  node, so the rule holds for every preset; see export/kept_nodes.py). The manifest's `int8`
  entry lists them.
- **ov**: NNCF post-training quantisation for OpenVINO, calibrated on the same images, written
  as an OpenVINO IR (`lga_image.int8.xml`/`.bin`) that only the `ov` backend runs (see
  export/quantize_ov.py). The fastest INT8 on CPUs with VNNI or AMX.

dynamic and static write `lga_image.int8.onnx`, run by the `ort` backend.

Why dynamic stays the default (issue #12, measured on a 2-core AMD EPYC with ONNX Runtime 1.32,
ratios within one run): static is no faster on ONNX Runtime's CPU kernels - image graph of the
trained tiny model: static 0.91x FP32, dynamic 0.84x; three vit_b-sized transformer blocks
(4096 tokens, width 768): static 0.29-0.32x, dynamic 0.26-0.29x (keeping MatMul outputs in
FP32, which helps accuracy, makes static 0.85-0.92x: no integer kernel is fused) - and it is
less accurate and depends on the calibration set: worst mask agreement over 100 QaTa Val
images 0.989 with 64 calibration images, 0.977 with 32, 0.76 with 8; dynamic 0.992 with none.

The text graph stays FP32 either way, so an INT8 export pairs the FP32 text graph with the
INT8 image graph. Both kinds of graph run on ONNX Runtime's CPU kernels.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np

from lga_export.errors import LGAError
from lga_export.export.calibration import CALIBRATION_SAMPLES, CalibrationSet, calibration_set
from lga_export.export.kept_nodes import (STATIC_OPS, described_nodes, graph_structure, kept_fp32_nodes,
                                         kept_fp32_nodes_in, node_scopes)
from lga_export.export.quantize_ov import quantize_ov_int8
from lga_export.family_specs import spec_of

INT8_METHODS = ("static", "dynamic", "ov")
CALIBRATED = ("static", "ov")
DEFAULT_INT8_METHOD = "dynamic"
QUANTIZED_OPS = ("MatMul", "Gemm")  # dynamic


def int8_method(value: bool | str | None, calibration_samples: int = CALIBRATION_SAMPLES) -> str | None:
    """`--int8` value -> one of INT8_METHODS or None (True means the default method); refuses
    an unknown method or a calibration count below 1 before any work is done."""
    if value is None or value is False:
        return None
    method = DEFAULT_INT8_METHOD if value is True else str(value).strip().lower()
    if method not in INT8_METHODS:
        raise LGAError(f"--int8 takes {' or '.join(INT8_METHODS)}, not {value!r}")
    if method in CALIBRATED and calibration_samples < 1:
        raise LGAError(f"--calibration-samples must be at least 1, not {calibration_samples}")
    return method


# ----------------------------------------------------------------------------------------------
# Dynamic quantisation
# ----------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """ONNX Runtime's quantiser advises "pre-processing" on the root logger at WARNING; the
    graphs are already optimised by the exporter, so keep that advice off the user's output."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_dynamic_int8(source: Path, target: Path, *, exclude_nodes: Iterable[str] = (),
                          per_channel: bool = False) -> dict[str, Any]:
    """Write `target` (one file) from the FP32 graph `source`, leaving `exclude_nodes` in FP32;
    return how it was quantised."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    excluded = list(exclude_nodes)
    scopes = node_scopes(graph_structure(source)) if excluded else {}
    with _quiet_root_logger():
        quantize_dynamic(source, target, weight_type=QuantType.QInt8, op_types_to_quantize=list(QUANTIZED_OPS),
                         per_channel=per_channel, reduce_range=False, nodes_to_exclude=excluded)
    return {"method": "dynamic", "tool": "onnxruntime.quantization.quantize_dynamic",
            "weight_type": "QInt8", "activations": "QUInt8, dynamic", "op_types": list(QUANTIZED_OPS),
            "per_channel": per_channel, "calibration": None, "excluded_nodes": described_nodes(excluded, scopes),
            "text_graph": "fp32"}


# ----------------------------------------------------------------------------------------------
# Static quantisation
# ----------------------------------------------------------------------------------------------

class _Reader:
    """ONNX Runtime CalibrationDataReader over a list of feeds (re-readable)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.feeds = feeds
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.feeds):
            return None
        self.position += 1
        return self.feeds[self.position - 1]

    def rewind(self) -> None:
        self.position = 0


def _reader(feeds: list[dict[str, np.ndarray]]):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(_Reader, CalibrationDataReader):
        pass

    return Reader(feeds)


@dataclass(frozen=True)
class StaticSettings:
    """How the static graph is made; the defaults are the measured best (issue #12), and
    `static_settings` adds the model family's scopes kept FP32."""

    activation_type: str = "QUInt8"
    weight_type: str = "QInt8"
    per_channel: bool = True
    calibrate_method: str = "MinMax"
    op_types: tuple[str, ...] = STATIC_OPS
    exclude_scopes: Mapping[str, str] = field(default_factory=dict)  # module-path pattern -> why kept FP32
    weight_matmuls_only: bool = True  # activation x activation MatMuls (attention) stay FP32
    extra: tuple[tuple[str, Any], ...] = ()


def static_settings(config) -> StaticSettings:
    """The measured best settings, keeping FP32 the scopes `config`'s family declares."""
    return StaticSettings(exclude_scopes=dict(spec_of(config.family).int8_fp32_scopes))


def quantize_static_int8(source: Path, target: Path, calibration: CalibrationSet,
                         settings: StaticSettings, *, exclude_nodes: Iterable[str] = (),
                         cache: Path | None = None) -> dict[str, Any]:
    """Write the QDQ INT8 graph `target` (one file) from the FP32 graph `source`, calibrated on
    `calibration`; return the manifest's `int8` entry. `cache`: a JSON calibration-range cache
    (reused when it exists: ablations calibrate once)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if not calibration.feeds:
        raise LGAError("static INT8 needs at least one calibration image")
    model = graph_structure(source)
    excluded = list(dict.fromkeys([*kept_fp32_nodes(model, settings.exclude_scopes, settings.weight_matmuls_only,
                                                    settings.op_types), *exclude_nodes]))
    scopes = node_scopes(model)
    del model
    # No CalibMaxIntermediateOutputs: ONNX Runtime 1.32's MinMax calibrator drops the collected
    # ranges each time that many are reached (clear without merge). MinMax keeps only a
    # ReduceMin/ReduceMax pair per tensor and image, so memory stays small without it.
    extra: dict[str, Any] = dict(settings.extra)
    start = time.perf_counter()
    with _quiet_root_logger():
        quantize_static(source, target, _reader(calibration.feeds) if cache is None or not Path(cache).is_file() else None,
                        quant_format=QuantFormat.QDQ, op_types_to_quantize=list(settings.op_types),
                        per_channel=settings.per_channel, reduce_range=False,
                        activation_type=getattr(QuantType, settings.activation_type),
                        weight_type=getattr(QuantType, settings.weight_type), nodes_to_exclude=excluded,
                        calibrate_method=getattr(CalibrationMethod, settings.calibrate_method),
                        extra_options=extra, **({"calibration_cache_path": str(cache)} if cache else {}))
    seconds = time.perf_counter() - start
    return {"method": "static", "tool": "onnxruntime.quantization.quantize_static", "format": "QDQ",
            "weight_type": settings.weight_type, "activations": f"{settings.activation_type}, calibrated",
            "per_channel": settings.per_channel, "calibrate_method": settings.calibrate_method,
            "op_types": list(settings.op_types), "weight_matmuls_only": settings.weight_matmuls_only,
            "calibration": calibration.to_dict(), "seconds": round(seconds, 1),
            "excluded_scopes": dict(settings.exclude_scopes),
            "excluded_nodes": described_nodes(excluded, scopes),
            "text_graph": "fp32"}


def int8_filename(method: str, graph: str) -> str:
    """The INT8 image graph's file, in the format of the backend that runs `method`'s graph
    (an OpenVINO IR for 'ov', ONNX for ONNX Runtime's methods)."""
    from lga_export.runtime.base import GRAPH_SUFFIXES
    from lga_export.runtime.registry import int8_format_of

    return f"{graph}.int8.{GRAPH_SUFFIXES[int8_format_of(method)]}"


def quantize_int8(method: str, source: Path, target: Path, *, config=None, text_graph: Path | None = None,
                  tokenizer_dir: Path | None = None, data_root: Path | None = None,
                  count: int = CALIBRATION_SAMPLES, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The exporter's entry point: the INT8 image graph by `method` (one of INT8_METHODS) at
    `target` (named by `int8_filename`)."""
    if method == "dynamic":
        spec = spec_of(config.family) if config is not None else None
        per_channel = bool(spec and spec.dynamic_int8_per_channel)
        scopes = dict(spec.dynamic_int8_fp32_scopes) if spec else {}
        log(f"quantising the image graph to INT8 (ONNX Runtime dynamic quantisation, weights per "
            f"{'channel' if per_channel else 'tensor'}) ...")
        entry = quantize_dynamic_int8(source, target, per_channel=per_channel,
                                      exclude_nodes=kept_fp32_nodes_in(source, scopes, False, QUANTIZED_OPS))
        return {**entry, "excluded_scopes": scopes}
    if method not in CALIBRATED:
        raise LGAError(f"unknown INT8 method {method!r}; choose {' or '.join(INT8_METHODS)}")
    if config is None or text_graph is None or tokenizer_dir is None:
        raise LGAError(f"{method} INT8 needs the model config, the FP32 text graph and the tokenizer")
    from lga_export.runtime.base import OPENVINO_IR
    from lga_export.runtime.registry import int8_format_of

    if int8_format_of(method) == OPENVINO_IR:  # NNCF writes OpenVINO's IR
        return quantize_ov_int8(source, target, config=config, text_graph=text_graph, tokenizer_dir=tokenizer_dir,
                                data_root=data_root, count=count, log=log)
    calibration = calibration_set(config, text_graph, tokenizer_dir, count, data_root)
    log(f"quantising the image graph to INT8 (static QDQ, calibrated on {len(calibration.feeds)} images of "
        f"{calibration.source.split(' (')[0]}) ...")
    return quantize_static_int8(source, target, calibration, static_settings(config))
