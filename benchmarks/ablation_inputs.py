"""What every graph ablation script starts from: an export's FP32 graphs and validation feeds.

The ablations (int8_dynamic_ablation, int8_static_ablation, ov_int8_ablation, ov_bf16_agreement)
each compare variants of the FP32 image graph on the same validation images; this opens the export
once, the same way, and gives the variant scripts one command line and one way to write figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lga_export.artifact import ExportArtifact, open_export  # noqa: E402
from lga_export.contract import IMAGE_GRAPH, TEXT_GRAPH  # noqa: E402
from lga_export.errors import LGAError  # noqa: E402
from lga_export.export.calibration import image_graph_feeds  # noqa: E402
from lga_export.samples import validation_samples  # noqa: E402


class AblationInputs(NamedTuple):
    art: ExportArtifact
    text_graph: Path  # FP32
    image_graph: Path  # FP32
    names: list[str]  # validation image names, in feed order
    source: str  # where the validation images came from
    feeds: list[dict[str, np.ndarray]]  # one image-graph feed per validation image


def ablation_inputs(export: Path, count: int, data: Path | None) -> AblationInputs | None:
    """The export's FP32 graphs and `count` validation feeds, or None after printing why the export
    cannot be used (the caller exits 2)."""
    try:
        art = open_export(export)
    except LGAError as exc:
        print(f"usage: {exc}", file=sys.stderr)
        return None
    text_graph, image_graph = art.graph(TEXT_GRAPH, "fp32"), art.graph(IMAGE_GRAPH, "fp32")
    samples, source = validation_samples(count, data)
    feeds = image_graph_feeds(art.config, text_graph, art.tokenizer_dir, [(s.rgb, s.text) for s in samples])
    return AblationInputs(art, text_graph, image_graph, [s.name for s in samples], source, feeds)


def variant_arguments(doc: str, variant_names, *, val: int = 8, data_required: bool = False,
                      calibration: int | None = None) -> argparse.Namespace:
    """The variant ablations' command line (EXPORT --data --val --threads --variants --out, and
    --calibration when `calibration` is a default count), with the chosen variants checked; the
    names chosen are in `args.chosen`."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("export", type=Path)
    parser.add_argument("--data", type=Path, required=data_required, default=None)
    if calibration is not None:
        parser.add_argument("--calibration", type=int, default=calibration)
    parser.add_argument("--val", type=int, default=val)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default=",".join(variant_names))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    args.chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.chosen if v not in variant_names]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(variant_names)}")
    if args.val < 1 or (calibration is not None and args.calibration < 1):
        parser.error("--val" + (" and --calibration need" if calibration is not None else " needs") + " at least 1 image")
    return args


def write_report(out: Path | None, report: dict) -> None:
    """The figures as JSON at `out` (nothing without one)."""
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, default=list))


def ort_masks_and_latency(config, graph: Path, feeds: list[dict[str, np.ndarray]], threads: int) -> tuple[np.ndarray, float]:
    """Mask logits of every feed through the image graph `graph` on ONNX Runtime, and the median
    latency (ms) of the first feed over 3 runs after one warm-up."""
    from lga_export.bench.timing import measure
    from lga_export.runtime.ort_runner import OnnxRuntimeRunner

    with OnnxRuntimeRunner(config, {IMAGE_GRAPH: graph}, threads=threads, cache_dir=False) as ort:
        logits = np.concatenate([ort.infer(IMAGE_GRAPH, f)["mask_logits"] for f in feeds])
        return logits, measure(lambda: ort.infer(IMAGE_GRAPH, feeds[0]), lambda: None, 1, 1, 3).p50_ms


def variant_figures(reference: np.ndarray, candidate: np.ndarray, names: list[str], ms: float,
                    ort_ms: float) -> dict:
    """What every variant row records: its latency against ONNX Runtime FP32's and the worst and
    mean mask agreement of its logits with the reference's, per image too."""
    from lga_export.verify.parity import compare

    parity = compare(reference, candidate, names, masks=True)
    return {"ms": round(ms, 1), "vs_ort_fp32": round(ms / ort_ms, 3), "worst": round(parity.dice_worst, 4),
            "worst_sample": parity.worst_sample, "mean": round(parity.dice_mean, 4),
            "per_image": [round(float(d), 4) for d in parity.per_sample_dice]}
