"""Calibration data for the calibrated INT8 methods (ONNX Runtime static, NNCF for OpenVINO): real
QaTa-COV19 *training* images and their reports, preprocessed exactly as the pipeline does, or
built-in synthetic images (another seed than validation's) when the shared data is absent."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from lga_export.errors import LGAError

CALIBRATION_SAMPLES = 64
CALIBRATION_SEED = 1  # built-in samples: validation uses seed 0


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
    pairs, source = calibration_samples(count, data_root)
    feeds = image_graph_feeds(config, text_graph, tokenizer_dir, [(rgb, text) for _, rgb, text in pairs])
    return CalibrationSet(feeds, source, [name for name, _, _ in pairs])


def image_graph_feeds(config, text_graph: Path, tokenizer_dir: Path,
                      pairs: Iterable[tuple[np.ndarray, str]]) -> list[dict[str, np.ndarray]]:
    """The image graph's feeds (batch 1) for (image, report) pairs: each image preprocessed by the
    pipeline, with the FP32 text graph's embedding of its report."""
    from lga_export.contract import TEXT_GRAPH, image_feeds
    from lga_export.runtime.ort_runner import OnnxRuntimeRunner
    from lga_export.runtime.pipeline import Segmenter

    with OnnxRuntimeRunner(config, {TEXT_GRAPH: text_graph}, tokenizer_dir=tokenizer_dir, low_memory=True,
                           cache_dir=False) as runner:
        segmenter = Segmenter(runner)
        return [image_feeds(segmenter.image_batch([rgb]), segmenter.text_embeddings([text])) for rgb, text in pairs]
