"""OpenVINO INT8 image graph (`lga-export onnx --int8 ov`): NNCF post-training quantisation of
the FP32 image graph, written into the export folder as an OpenVINO IR (`lga_image.int8.xml` and
`.bin`) that the `ov` backend runs at precision int8.

Calibration runs in a child process (`python -m lga_export.export.quantize_ov`), so the memory
NNCF takes is returned to the system before validation, and an out-of-memory kill becomes a
one-line error instead of taking the export down. It quantises a copy of the graph with its
batch fixed to 1: with the batch dynamic, OpenVINO's CPU plugin cannot plan memory ahead and
NNCF's statistics pass on vit_b at 1024 px peaked at 15 GB with 4 images and 22 GB with 16;
with the batch static it peaked at 6.9 GB with 4 or 16 images (2-core Xeon, 2026-11-30). The
quantised graph gets its dynamic batch back before it is saved.

What stays FP32, and why, is in `OpenVinoInt8Settings`; the manifest's `int8` entry records it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from lga_export.errors import LGAError, one_line
from lga_export.export.calibration import calibration_set
from lga_export.export.kept_nodes import WEIGHTED_OPS, described_nodes, graph_structure, kept_fp32_nodes, node_scopes
from lga_export.family_specs import spec_of

OPENVINO_WEIGHTED_OPS = ("Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul")
MISSING_NNCF = ('--int8 ov needs NNCF and OpenVINO; pip install "lga-export[int8]"')


@dataclass(frozen=True)
class OpenVinoInt8Settings:
    """How the OpenVINO INT8 graph is made. The defaults, with the family's scopes kept FP32
    (`ov_int8_settings`), are the measured best (issue #12, record
    `benchmarks/records/2026-11-30-tiny-ov-int8-ablation`: the trained default model, 64 QaTa
    Train images for calibration, worst / mean mask agreement with ONNX Runtime FP32 over 100 QaTa
    Val images, 2-core Xeon with VNNI):

    - NNCF's defaults (symmetric activations, mean ranges, everything quantised): 0.668 / 0.926;
    - the FFMs, patch embedding, neck, decoder (the family's `ov_int8_fp32_scopes`) and attention
      products FP32: 0.937 / 0.995;
    - the same with global min/max activation ranges: 0.980 / 0.996; with asymmetric activations
      (MIXED) as well: 0.984 / 0.996, at 0.47x ONNX Runtime FP32 on the tiny image graph.

    Those figures were measured while the declared scopes' biased Conv/ConvTranspose/Gemm ops
    still went INT8 (`openvino_names`); with them FP32 as declared, the same measurement on a
    2-core EPYC gives 0.9908 / 0.9975 at 0.77x ONNX Runtime FP32, 1.39x OpenVINO FP32 (record
    `benchmarks/records/2026-12-03-lite-stage6-verdict-and-ov-int8`): on tiny's 29 ms image graph
    the quantise/dequantise boundaries cost more than INT8 saves.

    Smooth quant lowered agreement (0.653 against 0.668) and is off."""

    model_type: str = "TRANSFORMER"  # NNCF's transformer scheme: no quantiser after Softmax, etc.
    preset: str = "MIXED"  # MIXED: asymmetric activations, symmetric weights; PERFORMANCE: all symmetric
    activation_ranges: str | None = "MINMAX"  # a RangeEstimatorParametersSet name; None: NNCF's default
    smooth_quant: bool = False
    exclude_scopes: tuple[str, ...] = ()  # module paths kept FP32: the family's, by `ov_int8_settings`
    weight_matmuls_only: bool = True  # attention's activation x activation MatMuls stay FP32
    fast_bias_correction: bool = True


def ov_int8_settings(config) -> OpenVinoInt8Settings:
    """The measured best settings, keeping FP32 the scopes `config`'s family declares."""
    return OpenVinoInt8Settings(exclude_scopes=tuple(spec_of(config.family).ov_int8_fp32_scopes))


def nncf_modules():
    try:
        import nncf
        import openvino as ov
    except ImportError as exc:
        raise LGAError(MISSING_NNCF) from exc
    return nncf, ov


def excluded_nodes(structure, settings: OpenVinoInt8Settings) -> list[str]:
    """ONNX node names of the graph `structure` (`graph_structure`) kept FP32; `openvino_names`
    finds the OpenVINO operations they became."""
    return kept_fp32_nodes(structure, settings.exclude_scopes, settings.weight_matmuls_only, WEIGHTED_OPS)


def openvino_names(model, onnx_names: list[str]) -> list[str]:
    """The friendly names of `model`'s operations (read from ONNX by OpenVINO) that come from the
    ONNX nodes `onnx_names`, which is what NNCF's ignored scope matches. OpenVINO splits a Conv,
    ConvTranspose or Gemm with a bias into the weighted op and an Add, and the Add keeps the ONNX
    name: the Conv becomes '<name>/WithoutBiases', the ConvTranspose gets a generated name. Ignoring
    the ONNX names alone left those weighted ops INT8 (the stem and the decoder's upscaling in lite:
    worst agreement 0.867)."""
    wanted = set(onnx_names)
    names = []
    for op in model.get_ops():
        name = op.get_friendly_name()
        if name in wanted or name.removesuffix("/WithoutBiases") in wanted:
            names.append(name)
        elif op.get_type_name() in OPENVINO_WEIGHTED_OPS:
            consumers = [t.get_node() for out in op.outputs() for t in out.get_target_inputs()]
            if len(consumers) == 1 and consumers[0].get_type_name() == "Add" and consumers[0].get_friendly_name() in wanted:
                names.append(name)
    return names


def quantize_openvino_int8(source: Path, target: Path, feeds: list[dict[str, Any]],
                           settings: OpenVinoInt8Settings = OpenVinoInt8Settings()) -> dict[str, Any]:
    """Write the IR `target` (.xml, with its .bin) from the FP32 ONNX graph `source`, calibrated on
    `feeds` (image-graph feeds of batch 1); return what was done. Runs in this process."""
    nncf, ov = nncf_modules()
    from lga_export.runtime.openvino_runner import with_batch
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    if not feeds:
        raise LGAError("OpenVINO INT8 needs at least one calibration image")
    nncf.set_log_level(logging.WARNING)  # its INFO lists every node it leaves alone, on stdout
    structure = graph_structure(source)
    ignored = excluded_nodes(structure, settings)
    model = ov.Core().read_model(str(source))
    ignored_ops = openvino_names(model, ignored)
    with_batch(model, 1)
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    advanced = AdvancedQuantizationParameters(
        smooth_quant_alphas=AdvancedSmoothQuantParameters() if settings.smooth_quant
        else AdvancedSmoothQuantParameters(matmul=-1),
        **({"activations_range_estimator_params": getattr(RangeEstimatorParametersSet, settings.activation_ranges)}
           if settings.activation_ranges else {}))
    start = time.perf_counter()
    quantized = nncf.quantize(model, nncf.Dataset(feeds), model_type=getattr(nncf.ModelType, settings.model_type),
                              preset=getattr(nncf.QuantizationPreset, settings.preset),
                              subset_size=len(feeds), fast_bias_correction=settings.fast_bias_correction,
                              ignored_scope=nncf.IgnoredScope(names=ignored_ops, validate=False),
                              advanced_parameters=advanced)
    seconds = time.perf_counter() - start
    with_batch(quantized, None)
    ov.save_model(quantized, str(target), compress_to_fp16=False)  # ignored layers keep FP32 weights
    return {"seconds": round(seconds, 1), "nncf": nncf.__version__,
            "excluded_nodes": described_nodes(ignored, node_scopes(structure)),
            "excluded_openvino_ops": ignored_ops,
            "openvino": ov.get_version().split("-")[0]}


# ----------------------------------------------------------------------------------------------
# The child process
# ----------------------------------------------------------------------------------------------

def _child_main(argv: list[str] | None = None) -> int:
    """Entry point of the calibration child: one JSON job in, one JSON result out."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("job", type=Path)
    job = json.loads(parser.parse_args(argv).job.read_text())
    from lga_export.config import LGAConfig

    config = LGAConfig.from_json(json.dumps(job["config"]))
    calibration = calibration_set(config, Path(job["text_graph"]), Path(job["tokenizer_dir"]), job["count"],
                                  Path(job["data_root"]) if job["data_root"] else None)
    result = quantize_openvino_int8(Path(job["source"]), Path(job["target"]), calibration.feeds,
                                    OpenVinoInt8Settings(**{k: tuple(v) if isinstance(v, list) else v
                                                            for k, v in job["settings"].items()}))
    result["calibration"] = calibration.to_dict()
    result["peak_memory_gb"] = _peak_memory_gb("RUSAGE_SELF")
    Path(job["result"]).write_text(json.dumps(result))
    return 0


def _peak_memory_gb(who: str) -> float:
    """Peak resident memory of this process (RUSAGE_SELF) or of its largest finished child."""
    import resource

    return round(resource.getrusage(getattr(resource, who)).ru_maxrss / 2**20, 1)  # KiB on Linux


def quantize_ov_int8(source: Path, target: Path, *, config, text_graph: Path, tokenizer_dir: Path,
                     data_root: Path | None, count: int, settings: OpenVinoInt8Settings | None = None,
                     log: Callable[[str], None] = print) -> dict[str, Any]:
    """The exporter's entry point: calibrate and quantise in a child process (by `settings`, else
    `ov_int8_settings(config)`); return the manifest's `int8` entry."""
    settings = settings or ov_int8_settings(config)
    nncf_modules()  # a missing extra is one line here, not a traceback in the child
    with tempfile.TemporaryDirectory(prefix="lga-int8-ov-") as scratch:
        job, result = Path(scratch) / "job.json", Path(scratch) / "result.json"
        job.write_text(json.dumps({
            "config": json.loads(config.to_json()), "source": str(source), "target": str(target),
            "text_graph": str(text_graph), "tokenizer_dir": str(tokenizer_dir), "count": count,
            "data_root": str(data_root) if data_root else None, "settings": asdict(settings), "result": str(result)}))
        log(f"quantising the image graph to INT8 for OpenVINO (NNCF, {count} calibration images, in a child "
            f"process) ...")
        start = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-m", "lga_export.export.quantize_ov", str(job)],
                                   stderr=subprocess.PIPE, text=True,  # stdout: NNCF's progress bars
                                   env={**os.environ, "PYTHONWARNINGS": "ignore"})
        try:
            _, stderr = process.communicate()
        except BaseException:  # Ctrl-C / SIGTERM of the export: do not leave the child running
            process.kill()
            process.wait()
            raise
        if process.returncode == -signal.SIGKILL:
            raise LGAError(f"the OpenVINO INT8 calibration was killed (out of memory? it reached "
                           f"{_peak_memory_gb('RUSAGE_CHILDREN')} GB; vit_b needs about 7 GB); free memory or use "
                           f"--int8 dynamic")
        if process.returncode != 0 or not result.is_file():
            last = one_line(stderr, 300, "last") or "no message"
            raise LGAError(f"the OpenVINO INT8 calibration failed ({last}); try --int8 dynamic")
        done = json.loads(result.read_text())
    return {"method": "ov", "tool": "nncf.quantize", "runtime": "ov", "format": "OpenVINO IR",
            "nncf": done["nncf"], "openvino": done["openvino"], "settings": asdict(settings),
            "weights": "INT8 per channel, symmetric",
            "activations": "INT8 per tensor, " + ("asymmetric" if settings.preset == "MIXED" else "symmetric"),
            "calibration": done["calibration"], "seconds": done["seconds"],
            "wall_seconds": round(time.perf_counter() - start, 1), "peak_memory_gb": done["peak_memory_gb"],
            "excluded_nodes": done["excluded_nodes"], "excluded_openvino_ops": done["excluded_openvino_ops"],
            "text_graph": "fp32"}


if __name__ == "__main__":
    sys.exit(_child_main())
