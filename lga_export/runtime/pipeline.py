"""End-to-end segmentation over any runner: tokenise, preprocess, infer both graphs, postprocess.

Predict, export validation, lga-bench, the comparator and serving all go through Segmenter,
so parity compares only the graphs. Imports neither torch nor transformers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lga_export.errors import LGAError
from lga_export.contract import IMAGE_GRAPH, TEXT_GRAPH, image_feeds, specs_by_name
from lga_export.preprocess import normalize
from lga_export.resample import logits_to_mask
from lga_export.runtime.base import Runner


@dataclass
class Segmentation:
    logits: np.ndarray  # 1 x M x M
    mask: np.ndarray  # H x W bool, original size


class Segmenter:
    """The same pre/post-processing for every backend; the tokenizer is the runner's own
    (an export folder's tokenizer.json for ONNX Runtime) unless one is given."""

    def __init__(self, runner: Runner, tokenizer=None) -> None:
        self.runner, self.config = runner, runner.config
        self.tokenizer = tokenizer if tokenizer is not None else runner.tokenizer()
        specs = specs_by_name(self.config)
        self.text_output, self.image_output = specs[TEXT_GRAPH].output, specs[IMAGE_GRAPH].output

    def text_feeds(self, texts: list[str]) -> dict[str, np.ndarray]:
        return self.tokenizer.encode(texts, self.config.max_text_length)

    def image_batch(self, images: list[np.ndarray]) -> np.ndarray:
        return np.stack([normalize(rgb, self.config) for rgb in images])

    def text_embeddings(self, texts: list[str]) -> np.ndarray:
        return self.runner.infer(TEXT_GRAPH, self.text_feeds(texts))[self.text_output]

    def image_logits(self, images: list[np.ndarray], embedding: np.ndarray) -> np.ndarray:
        """Mask logits for images whose text embeddings are already computed."""
        if len(images) != len(embedding):
            raise LGAError(f"{len(images)} images but {len(embedding)} texts; give one report per image")
        return self.runner.infer(IMAGE_GRAPH, image_feeds(self.image_batch(images), embedding))[self.image_output]

    def logits(self, images: list[np.ndarray], texts: list[str]) -> np.ndarray:
        if len(images) != len(texts):
            raise LGAError(f"{len(images)} images but {len(texts)} texts; give one report per image")
        return self.image_logits(images, self.text_embeddings(texts))

    def segment(self, images: list[np.ndarray], texts: list[str], threshold: float = 0.0) -> list[Segmentation]:
        logits = self.logits(images, texts)
        return [Segmentation(l, logits_to_mask(l, rgb.shape[:2], threshold)) for l, rgb in zip(logits, images)]
