"""Which scopes ONNX Runtime's static INT8 (`lga-export onnx --int8 static`) should keep FP32:
quantise an export's FP32 image graph with the product's quantiser once per variant (the family's
scopes, plus the FFMs and/or TinyViT stages) and compare each graph's masks with ONNX Runtime FP32.

    python benchmarks/int8_static_ablation.py EXPORT_DIR --data DATA_ROOT [--calibration 32] [--val 8]
           [--variants product,without-stages,...] [--out OUT.json]

Agreement: per-sample mask Dice of the image graph's logits (> 0) against ONNX Runtime FP32 on the
first --val QaTa Val images. Latency: image graph, batch 1, median of 3 after one warm-up. The
stage variants name TinyViT's `layers.N` (lite); on SAM-ViT they match nothing.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ablation_inputs import (ablation_inputs, ort_masks_and_latency, variant_arguments, variant_figures,  # noqa: E402
                             write_report)

from lga_export.export.calibration import calibration_set  # noqa: E402
from lga_export.export.quantize import StaticSettings, quantize_static_int8, static_settings  # noqa: E402
from lga_export.family_specs.spec import FFM_SCOPE  # noqa: E402
from lga_export.runtime.host import cpu_identity  # noqa: E402

STAGES = r"^model\.image_encoder\.layers\.[{}]\."
NAMES = ("product", "without-stages", "+ffms", "+stages0-2", "+ffms+stages0-2", "+all-stages")


def variants(product: StaticSettings) -> dict[str, StaticSettings]:
    """The family's static settings ('product'); the same without any encoder stage kept FP32
    ('without-stages', lite's product before 2026-12-03), and that with more scopes kept FP32."""
    base = replace(product, exclude_scopes={k: v for k, v in product.exclude_scopes.items()
                                            if not k.startswith(r"^model\.image_encoder\.layers")})

    def plus(*scopes: str) -> StaticSettings:
        return replace(base, exclude_scopes={**base.exclude_scopes, **{s: "ablation" for s in scopes}})

    return dict(zip(NAMES, (product, base, plus(FFM_SCOPE), plus(STAGES.format("012")),
                            plus(FFM_SCOPE, STAGES.format("012")), plus(STAGES.format("0123")))))


def main() -> int:
    args = variant_arguments(__doc__, NAMES, data_required=True, calibration=32)
    chosen = args.chosen
    inputs = ablation_inputs(args.export, args.val, args.data)
    if inputs is None:
        return 2
    art, text_graph, image_graph, names, source, feeds = inputs
    calibration = calibration_set(art.config, text_graph, art.tokenizer_dir, args.calibration, args.data)
    settings = variants(static_settings(art.config))

    reference, ort_ms = ort_masks_and_latency(art.config, image_graph, feeds, args.threads)
    model, _ = cpu_identity()
    report = {"export": str(args.export), "preset": art.config.preset, "cpu": model, "threads": args.threads,
              "calibration": calibration.to_dict(), "validation": {"source": source, "images": names},
              "ort_fp32_ms": round(ort_ms, 1), "variants": {}}
    print(f"{art.config.preset}: ORT FP32 image graph {ort_ms:.0f} ms; {model}", flush=True)
    for name in chosen:
        with tempfile.TemporaryDirectory(prefix="lga-static-") as scratch:
            entry = quantize_static_int8(image_graph, Path(scratch) / "q.onnx", calibration, settings[name])
            logits, ms = ort_masks_and_latency(art.config, Path(scratch) / "q.onnx", feeds, args.threads)
        row = {"excluded_scopes": list(settings[name].exclude_scopes), "excluded_nodes": len(entry["excluded_nodes"]),
               **variant_figures(reference, logits, names, ms, ort_ms)}
        report["variants"][name] = row
        print(f"  {name:18s} worst {row['worst']:.4f} mean {row['mean']:.4f}; {ms:.0f} ms = "
              f"{ms / ort_ms:.2f}x ORT FP32; {row['excluded_nodes']} nodes FP32", flush=True)
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
