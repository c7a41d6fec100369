"""Which parts of an image graph ONNX Runtime's dynamic INT8 (`lga-export onnx --int8 dynamic`)
should leave in FP32: quantise an export's FP32 image graph with the product's quantiser, once
per variant (nothing kept, weights per channel, or one scope of the model kept FP32), and compare
each graph's masks with ONNX Runtime FP32 in the same run.

    python benchmarks/int8_dynamic_ablation.py EXPORT_DIR --data DATA_ROOT [--val 8]
           [--variants all,per-channel,...] [--out OUT.json]

Agreement: per-sample mask Dice of the image graph's logits (> 0) against ONNX Runtime FP32 on
the first --val QaTa Val images (the built-in samples without DATA_ROOT). Latency: image graph,
batch 1, median of 3 after one warm-up. Prints one line per variant, writes JSON with --out.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ablation_inputs import (ablation_inputs, ort_masks_and_latency, variant_arguments, variant_figures,  # noqa: E402
                             write_report)

from lga_export.export.kept_nodes import kept_fp32_nodes  # noqa: E402
from lga_export.export.quantize import QUANTIZED_OPS, quantize_dynamic_int8  # noqa: E402
from lga_export.family_specs.spec import FFM_SCOPE  # noqa: E402
from lga_export.runtime.host import cpu_identity  # noqa: E402

# variant -> (module-path patterns kept FP32, keep attention's activation products, per channel)
VARIANTS: dict[str, tuple[tuple[str, ...], bool, bool]] = {
    "all": ((), False, False),  # the product's dynamic INT8 before this ablation
    "per-channel": ((), False, True),
    "attention": ((), True, False),
    "decoder": ((r"^model\.mask_decoder\.",), False, False),
    "ffms": ((FFM_SCOPE,), False, False),
    "stage1": ((r"^model\.image_encoder\.layers\.1\.",), False, False),
    "stage2": ((r"^model\.image_encoder\.layers\.2\.",), False, False),
    "stage3": ((r"^model\.image_encoder\.layers\.3\.",), False, False),
    "stages2-3": ((r"^model\.image_encoder\.layers\.[23]\.",), False, False),
    "stages1-2": ((r"^model\.image_encoder\.layers\.[12]\.",), False, False),
    "encoder": ((r"^model\.image_encoder\.",), False, False),
    "encoder+attention": ((r"^model\.image_encoder\.",), True, False),
}
VARIANTS.update({f"per-channel+{name}": (scopes, attention, True)  # per channel with one scope kept FP32
                 for name, (scopes, attention, _) in list(VARIANTS.items()) if scopes})


def main() -> int:
    import onnx

    args = variant_arguments(__doc__, tuple(VARIANTS))
    chosen = args.chosen

    inputs = ablation_inputs(args.export, args.val, args.data)
    if inputs is None:
        return 2
    art, _, fp32_image_graph, names, source, feeds = inputs
    graph = onnx.load(str(fp32_image_graph), load_external_data=False)

    reference, ort_ms = ort_masks_and_latency(art.config, fp32_image_graph, feeds, args.threads)
    model, flags = cpu_identity()
    report = {"export": str(args.export), "preset": art.config.preset, "cpu": model, "threads": args.threads,
              "vnni": [f for f in flags if "vnni" in f or "amx_int8" in f],
              "validation": {"source": source, "images": names}, "ort_fp32_ms": round(ort_ms, 1), "variants": {}}
    print(f"{art.config.preset}: ORT FP32 image graph {ort_ms:.0f} ms; {len(names)} validation images; {model}",
          flush=True)
    for name in chosen:
        excluded = kept_fp32_nodes(graph, VARIANTS[name][0], VARIANTS[name][1], QUANTIZED_OPS)
        with tempfile.TemporaryDirectory(prefix="lga-int8-dyn-") as scratch:
            target = Path(scratch) / "lga_image.int8.onnx"
            start = time.perf_counter()
            quantize_dynamic_int8(fp32_image_graph, target, exclude_nodes=excluded, per_channel=VARIANTS[name][2])
            seconds = time.perf_counter() - start
            output, ms = ort_masks_and_latency(art.config, target, feeds, args.threads)
        row = {"kept_fp32": list(VARIANTS[name][0]), "attention_fp32": VARIANTS[name][1],
               "per_channel": VARIANTS[name][2], "excluded_nodes": len(excluded), "quantize_s": round(seconds, 1),
               **variant_figures(reference, output, names, ms, ort_ms)}
        report["variants"][name] = row
        print(f"  {name:18s} {ms:7.0f} ms = {ms / ort_ms:.3f}x ORT FP32; agreement worst {row['worst']:.4f} "
              f"mean {row['mean']:.4f}; {len(excluded)} nodes FP32", flush=True)
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
