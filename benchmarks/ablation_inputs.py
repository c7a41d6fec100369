"""What every graph ablation script starts from: an export's FP32 graphs and validation feeds.

The ablations (int8_dynamic_ablation, ov_int8_ablation, ov_bf16_agreement) each compare variants
of the FP32 image graph on the same validation images; this opens the export once, the same way.
"""

from __future__ import annotations

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
