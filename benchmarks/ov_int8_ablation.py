"""Which layers the OpenVINO INT8 graph (`lga-export onnx --int8 ov`) keeps in FP32: quantise an
export's FP32 image graph with several settings, each with the product's own quantiser
(`quantize_openvino_int8`) and run by the `ov` backend at int8, against ONNX Runtime FP32 in
the same run.

    python benchmarks/ov_int8_ablation.py EXPORT_DIR --data DATA_ROOT [--calibration 32] [--val 16]
           [--variants none,ffms+scopes+attention,product] [--out OUT.json]

Agreement: per-sample mask Dice of the image graph's logits against ONNX Runtime FP32 on QaTa
Val images (the export's own validation compares against PyTorch, end to end). Latency: image
graph, batch 1, median of 3 after one warm-up, --threads threads. Prints one line per variant
and writes the figures as JSON. Needs the int8 extra; vit_b needs about 7 GB per variant.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ablation_inputs import ablation_inputs, variant_arguments, variant_figures, write_report  # noqa: E402

from lga_export.bench.timing import measure  # noqa: E402
from lga_export.config import get_preset  # noqa: E402
from lga_export.export.calibration import calibration_set  # noqa: E402
from lga_export.export.quantize_ov import OpenVinoInt8Settings, ov_int8_settings, quantize_openvino_int8  # noqa: E402
from lga_export.contract import IMAGE_GRAPH, TEXT_GRAPH  # noqa: E402
from lga_export.runtime.host import cpu_identity  # noqa: E402
from lga_export.runtime.openvino_runner import OpenVinoRunner  # noqa: E402
from lga_export.runtime.ort_runner import OnnxRuntimeRunner  # noqa: E402
from lga_export.family_specs import spec_of  # noqa: E402
from lga_export.family_specs.spec import FFM_SCOPE  # noqa: E402

# NNCF's own defaults, nothing kept FP32; every variant changes that in the named ways.
NONE = OpenVinoInt8Settings(preset="PERFORMANCE", activation_ranges=None, exclude_scopes=(), weight_matmuls_only=False)
IMAGE_UPDATE = r"^model\.ffms\.\d+\.image_update"


def variants(config) -> dict[str, OpenVinoInt8Settings]:
    """The settings compared, with the export's family's INT8 scopes (SAM-ViT: patch embedding,
    neck, mask decoder)."""
    scopes = tuple(spec_of(config.family).int8_fp32_scopes)
    return {
        "none": NONE,
        "sq": replace(NONE, smooth_quant=True),
        "mixed": replace(NONE, preset="MIXED"),
        "scopes": replace(NONE, exclude_scopes=scopes),
        "attention": replace(NONE, weight_matmuls_only=True),
        "scopes+attention": replace(NONE, exclude_scopes=scopes, weight_matmuls_only=True),
        "image-update": replace(NONE, exclude_scopes=(IMAGE_UPDATE,)),
        "image-attn": replace(NONE, exclude_scopes=(IMAGE_UPDATE + r"\.attn",)),
        "text-update": replace(NONE, exclude_scopes=(r"^model\.ffms\.\d+\.text_update",)),
        "ffms": replace(NONE, exclude_scopes=(FFM_SCOPE,)),
        "ffms+scopes": replace(NONE, exclude_scopes=(FFM_SCOPE, *scopes)),
        "ffms+scopes+attention": replace(NONE, exclude_scopes=(FFM_SCOPE, *scopes), weight_matmuls_only=True),
        "ffms+scopes+attention+mixed": replace(NONE, exclude_scopes=(FFM_SCOPE, *scopes), weight_matmuls_only=True,
                                               preset="MIXED"),
        "ffms+scopes+attention+minmax": replace(NONE, exclude_scopes=(FFM_SCOPE, *scopes), weight_matmuls_only=True,
                                                activation_ranges="MINMAX"),
        "product": ov_int8_settings(config),  # the family's scopes, attention, MIXED, MINMAX
        "product+dynamic-scopes": replace(ov_int8_settings(config), exclude_scopes=(
            *ov_int8_settings(config).exclude_scopes, *spec_of(config.family).dynamic_int8_fp32_scopes)),
        **{f"product+{name}": replace(ov_int8_settings(config), exclude_scopes=(
            *ov_int8_settings(config).exclude_scopes, rf"^model\.image_encoder\.layers\.[{stages}]\."))
           for name, stages in (("stage0", "0"), ("stage3", "3"), ("stages0-1", "01"), ("stages0-2", "012"),
                                ("stages0+3", "03"), ("stages0-1+3", "013"), ("stages1-3", "123"), ("stages0-3", "0123"))},  # TinyViT's stages
        "product+dense-pe": replace(ov_int8_settings(config), exclude_scopes=(
            *ov_int8_settings(config).exclude_scopes, r"^model\.dense_pe")),
        "product+dense-pe+text-carry": replace(ov_int8_settings(config), exclude_scopes=(
            *ov_int8_settings(config).exclude_scopes, r"^model\.dense_pe", r"^model\.text_carry\.")),
    }


VARIANT_NAMES = tuple(variants(get_preset("tiny")))  # the same for every family


def median_latency(run, repeats: int = 3) -> float:
    """Seconds: the median of `repeats` calls after one warm-up."""
    return measure(run, lambda: None, 1, 1, repeats).p50_ms / 1000


def main() -> int:
    args = variant_arguments(__doc__, VARIANT_NAMES, val=16, data_required=True, calibration=32)
    chosen = args.chosen

    inputs = ablation_inputs(args.export, args.val, args.data)
    if inputs is None:
        return 2
    art, text_graph, image_graph, names, source, feeds = inputs
    settings = variants(art.config)
    calibration = calibration_set(art.config, text_graph, art.tokenizer_dir, args.calibration, args.data)
    with OnnxRuntimeRunner(art.config, {IMAGE_GRAPH: image_graph}, threads=args.threads, cache_dir=False) as ort:
        reference = np.concatenate([ort.infer(IMAGE_GRAPH, f)["mask_logits"] for f in feeds])
        ort_ms = median_latency(lambda: ort.infer(IMAGE_GRAPH, feeds[0])) * 1000
    with OpenVinoRunner(art.config, {TEXT_GRAPH: text_graph, IMAGE_GRAPH: image_graph}, "fp32", threads=args.threads,
                        tokenizer_dir=art.tokenizer_dir, cache_dir=False) as ov_fp32:
        ov_fp32_ms = median_latency(lambda: ov_fp32.infer(IMAGE_GRAPH, feeds[0])) * 1000
    model, flags = cpu_identity()
    report = {"export": str(args.export), "preset": art.config.preset, "cpu": model, "threads": args.threads,
              "vnni": [f for f in flags if "vnni" in f or "amx_int8" in f],
              "calibration": calibration.to_dict(), "validation": {"source": source, "images": names},
              "ort_fp32_ms": round(ort_ms, 1), "ov_fp32_ms": round(ov_fp32_ms, 1), "variants": {}}
    print(f"{art.config.preset}: ORT FP32 image graph {ort_ms:.0f} ms, OpenVINO FP32 {ov_fp32_ms:.0f} ms; {len(calibration.feeds)} calibration, "
          f"{len(names)} validation images; {model}", flush=True)
    for name in chosen:
        with tempfile.TemporaryDirectory(prefix="lga-ov-int8-") as scratch:
            target = Path(scratch) / "lga_image.int8.xml"
            done = quantize_openvino_int8(image_graph, target, calibration.feeds, settings[name])
            with OpenVinoRunner(art.config, {TEXT_GRAPH: text_graph, IMAGE_GRAPH: target}, "int8",
                                threads=args.threads, tokenizer_dir=art.tokenizer_dir, cache_dir=False) as ov:
                output = np.concatenate([ov.infer(IMAGE_GRAPH, f)["mask_logits"] for f in feeds])
                ms = median_latency(lambda: ov.infer(IMAGE_GRAPH, feeds[0])) * 1000
        row = {"settings": vars(settings[name]), "quantize_s": done["seconds"], "excluded_nodes": len(done["excluded_nodes"]),
               "vs_ov_fp32": round(ms / ov_fp32_ms, 3), **variant_figures(reference, output, names, ms, ort_ms)}
        report["variants"][name] = row
        print(f"  {name:30s} {ms:7.0f} ms = {ms / ort_ms:.3f}x ORT FP32, {ms / ov_fp32_ms:.3f}x OV FP32; agreement worst "
              f"{row['worst']:.4f} mean {row['mean']:.4f}; {row['excluded_nodes']} nodes FP32; NNCF {done['seconds']:.0f} s",
              flush=True)
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
