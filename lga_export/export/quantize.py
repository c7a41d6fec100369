"""INT8 image graphs for the CPU, written into the export folder beside the FP32 graphs.

Three methods (`lga-export onnx --int8 dynamic|static|ov`):

- **dynamic** (the default): ONNX Runtime's dynamic quantisation of the weight MatMuls/Gemms
  (INT8 weights per tensor, activations quantised on the fly per run); no calibration data.
- **static**: ONNX Runtime's `quantize_static`, QDQ format, weights INT8 per channel,
  activations UINT8 with MinMax ranges calibrated on real QaTa-COV19 *training* images and
  their reports, preprocessed exactly as the pipeline does (`Segmenter.image_batch`; the
  text-embedding input is the FP32 text graph's output on the matching report). Without the
  shared data it calibrates on built-in synthetic images (another seed than validation's) and
  the manifest says so. Nodes whose quantisation measurably hurt mask agreement stay FP32:
  attention's activation x activation MatMuls, and the modules in `SENSITIVE_SCOPES` (chosen
  by the PyTorch module path the exporter keeps on every node, so the rule holds for every
  preset). The manifest's `int8` entry lists them.
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

import ast
import contextlib
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from lga_export.errors import LGAError

INT8_METHODS = ("static", "dynamic", "ov")
CALIBRATED = ("static", "ov")
DEFAULT_INT8_METHOD = "dynamic"
QUANTIZED_OPS = ("MatMul", "Gemm")  # dynamic
STATIC_OPS = ("MatMul", "Gemm", "Conv")
CALIBRATION_SAMPLES = 64
CALIBRATION_SEED = 1  # built-in samples: validation uses seed 0

# Module paths (regular expressions over the PyTorch module scope the dynamo exporter records
# on every node) whose nodes stay FP32 in the static INT8 graph, and why. Found by ablation on
# the trained default model (each module group quantised alone, then everything but it; worst
# mask agreement over 100 QaTa Val images against FP32). All three carry little of the FLOPs.
SENSITIVE_SCOPES: dict[str, str] = {
    r"^model\.image_encoder\.patch_embed": "patch embedding; quantised alone: worst agreement 0.990",
    r"^model\.image_encoder\.neck": "neck convolutions before the decoder; alone: 0.992",
    r"^model\.mask_decoder\.": "mask decoder (two-way transformer, hypernetwork MLPs, logits product); each "
                                 "transformer layer alone: 0.992",
}
# Together (64 calibration images): everything else INT8 0.973 worst / 0.9929 mean; the patch
# embedding and neck kept FP32 0.980 / 0.9948; the decoder too 0.989 / 0.9970.

_SCOPE_KEY = "pkg.torch.onnx.name_scopes"


def int8_method(value: bool | str | None, calibration_samples: int = CALIBRATION_SAMPLES) -> str | None:
    """`--int8` value -> 'static' / 'dynamic' / None (True means the default method); refuses
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


def quantize_dynamic_int8(source: Path, target: Path) -> dict[str, Any]:
    """Write `target` (one file) from the FP32 graph `source`; return how it was quantised."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_root_logger():
        quantize_dynamic(source, target, weight_type=QuantType.QInt8, op_types_to_quantize=list(QUANTIZED_OPS),
                         per_channel=False, reduce_range=False)
    return {"method": "dynamic", "tool": "onnxruntime.quantization.quantize_dynamic",
            "weight_type": "QInt8", "activations": "QUInt8, dynamic", "op_types": list(QUANTIZED_OPS),
            "per_channel": False, "calibration": None, "excluded_nodes": [], "text_graph": "fp32"}


# ----------------------------------------------------------------------------------------------
# Calibration data
# ----------------------------------------------------------------------------------------------

@dataclass
class CalibrationSet:
    """Feeds of the image graph (one image each) and where they came from."""

    feeds: list[dict[str, np.ndarray]]
    source: str
    names: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "count": len(self.feeds), "images": self.names}


def calibration_samples(count: int, data_root: Path | None = None) -> tuple[list[tuple[str, np.ndarray, str]], str]:
    """`count` (name, rgb, report) training pairs spread evenly over QaTa-COV19's Train split,
    or built-in synthetic images when the data is absent."""
    from lga_export.imageio import read_image
    from lga_export.samples import default_data_root, synthetic_samples

    if count < 1:
        raise LGAError(f"--calibration-samples must be at least 1, not {count}")
    root = data_root or default_data_root()
    if root is not None and (Path(root) / "qata-cov19" / "Train_Folder").is_dir():
        from lga_export.data.lvit import index_split

        index = index_split(Path(root) / "qata-cov19", "Train", skip_bad=True, check_files=False)
        if len(index):
            picks = np.linspace(0, len(index) - 1, num=min(count, len(index))).round().astype(int)
            chosen = [index.samples[i] for i in dict.fromkeys(picks.tolist())]
            return ([(s.image.name, read_image(s.image), s.text) for s in chosen],
                    f"qata-cov19 Train ({Path(root)}), {len(chosen)} of {len(index)} images, evenly spaced")
    samples = synthetic_samples(count, seed=CALIBRATION_SEED)
    return [(s.name, s.rgb, s.text) for s in samples], f"built-in synthetic samples (seed {CALIBRATION_SEED})"


def calibration_set(config, text_graph: Path, tokenizer_dir: Path, count: int = CALIBRATION_SAMPLES,
                    data_root: Path | None = None) -> CalibrationSet:
    """Image-graph feeds for calibration: each training image preprocessed by the pipeline,
    with the FP32 text graph's embedding of its report."""
    from lga_export.export.specs import TEXT_GRAPH, image_feeds
    from lga_export.runtime.ort_runner import OnnxRuntimeRunner
    from lga_export.runtime.pipeline import Segmenter

    pairs, source = calibration_samples(count, data_root)
    feeds = []
    with OnnxRuntimeRunner(config, {TEXT_GRAPH: text_graph}, tokenizer_dir=tokenizer_dir, low_memory=True,
                           cache_dir=False) as runner:
        segmenter = Segmenter(runner)
        for _, rgb, text in pairs:
            feeds.append(image_feeds(segmenter.image_batch([rgb]), segmenter.text_embeddings([text])))
    return CalibrationSet(feeds, source, [name for name, _, _ in pairs])


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


# ----------------------------------------------------------------------------------------------
# Which nodes stay FP32
# ----------------------------------------------------------------------------------------------

def node_scopes(model) -> dict[str, str]:
    """Node name -> its PyTorch module path ('model.ffms.0.image_update.attn.v_proj/linear_6'),
    from the name scopes the dynamo exporter records ('' when a node has none)."""
    scopes = {}
    for node in model.graph.node:
        value = next((p.value for p in node.metadata_props if p.key == _SCOPE_KEY), None)
        try:
            parts = ast.literal_eval(value) if value else []
        except (ValueError, SyntaxError):
            parts = []
        path = [p for p in parts if p]
        scopes[node.name] = (max((p for p in path[:-1]), key=len, default="") + "/" + path[-1]) if path else ""
    return scopes


def activation_matmuls(model) -> list[str]:
    """MatMuls whose second input is computed, not a weight: attention's q @ k^T and
    softmax @ v. ONNX Runtime's QDQ quantiser ignores its MatMulConstBOnly option, so they are
    excluded by name (quantising the softmax output of SAM's global attention to 8 bits wrecks
    the masks: 1024-4096 keys, most probabilities below 1/255)."""
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    produced = {}
    for node in model.graph.node:
        for output in node.output:
            produced[output] = node

    def constant(name: str, depth: int = 0) -> bool:  # a weight, possibly behind Transpose/Reshape/Cast
        if name in constants:
            return True
        node = produced.get(name)
        return (node is not None and depth < 4 and node.op_type in ("Transpose", "Reshape", "Cast", "Identity")
                and bool(node.input) and constant(node.input[0], depth + 1))

    return [n.name for n in model.graph.node if n.op_type == "MatMul" and not constant(n.input[1])]


def nodes_matching(model, patterns: Iterable[str], op_types: Iterable[str] = STATIC_OPS) -> list[str]:
    """Names of the nodes of `op_types` whose module path matches any pattern (re.search)."""
    compiled = [re.compile(p) for p in patterns]
    ops = set(op_types)
    scopes = node_scopes(model)
    return [node.name for node in model.graph.node
            if node.op_type in ops and any(c.search(scopes.get(node.name, "")) for c in compiled)]


def kept_fp32_nodes(model, scopes: Iterable[str], attention_products: bool,
                    op_types: Iterable[str] = STATIC_OPS) -> list[str]:
    """Node names an INT8 graph keeps in FP32: the `op_types` nodes under `scopes`, and with
    `attention_products` the activation x activation MatMuls (ONNX Runtime and OpenVINO alike)."""
    return list(dict.fromkeys([*(activation_matmuls(model) if attention_products else []),
                               *nodes_matching(model, scopes, op_types)]))


# ----------------------------------------------------------------------------------------------
# Static quantisation
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StaticSettings:
    """How the static graph is made; the defaults are the measured best (issue #12)."""

    activation_type: str = "QUInt8"
    weight_type: str = "QInt8"
    per_channel: bool = True
    calibrate_method: str = "MinMax"
    op_types: tuple[str, ...] = STATIC_OPS
    exclude_scopes: tuple[str, ...] = tuple(SENSITIVE_SCOPES)
    weight_matmuls_only: bool = True  # activation x activation MatMuls (attention) stay FP32
    extra: tuple[tuple[str, Any], ...] = ()


def quantize_static_int8(source: Path, target: Path, calibration: CalibrationSet,
                         settings: StaticSettings = StaticSettings(), *, exclude_nodes: Iterable[str] = (),
                         cache: Path | None = None) -> dict[str, Any]:
    """Write the QDQ INT8 graph `target` (one file) from the FP32 graph `source`, calibrated on
    `calibration`; return the manifest's `int8` entry. `cache`: a JSON calibration-range cache
    (reused when it exists: ablations calibrate once)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if not calibration.feeds:
        raise LGAError("static INT8 needs at least one calibration image")
    model = onnx.load(str(source), load_external_data=False)
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
            "excluded_scopes": {p: SENSITIVE_SCOPES.get(p, "") for p in settings.exclude_scopes},
            "excluded_nodes": [f"{name} ({scopes.get(name, '')})" for name in excluded],
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
        log("quantising the image graph to INT8 (ONNX Runtime dynamic quantisation) ...")
        return quantize_dynamic_int8(source, target)
    if method not in CALIBRATED:
        raise LGAError(f"unknown INT8 method {method!r}; choose {' or '.join(INT8_METHODS)}")
    if config is None or text_graph is None or tokenizer_dir is None:
        raise LGAError(f"{method} INT8 needs the model config, the FP32 text graph and the tokenizer")
    from lga_export.runtime.base import OPENVINO_IR
    from lga_export.runtime.registry import int8_format_of

    if int8_format_of(method) == OPENVINO_IR:  # NNCF writes OpenVINO's IR
        from lga_export.export.quantize_ov import quantize_ov_int8

        return quantize_ov_int8(source, target, config=config, text_graph=text_graph, tokenizer_dir=tokenizer_dir,
                                data_root=data_root, count=count, log=log)
    calibration = calibration_set(config, text_graph, tokenizer_dir, count, data_root)
    log(f"quantising the image graph to INT8 (static QDQ, calibrated on {len(calibration.feeds)} images of "
        f"{calibration.source.split(' (')[0]}) ...")
    return quantize_static_int8(source, target, calibration)
