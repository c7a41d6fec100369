"""End-to-end segmentation over any runner: tokenise, preprocess, infer both graphs, postprocess."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from lga_export.config import LGAConfig
from lga_export.errors import LGAError
from lga_export.preprocess import logits_to_mask, normalize
from lga_export.runtime.base import Runner


def tokenize(tokenizer, texts: list[str], max_length: int) -> dict[str, np.ndarray]:
    """input_ids / attention_mask (int64, padded to the longest); over-long text is truncated
    with a warning, empty text is an error."""
    for text in texts:
        if not text or not text.strip():
            raise LGAError("empty text: every image needs a report (pass --text or a text file row)")
    encoded = tokenizer(list(texts), padding=True, truncation=False, return_tensors="np")
    if encoded["input_ids"].shape[1] > max_length:
        warnings.warn(f"text longer than the model's {max_length} tokens was truncated", stacklevel=2)
        encoded = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length,
                            return_tensors="np")
    return {"input_ids": encoded["input_ids"].astype(np.int64),
            "attention_mask": encoded["attention_mask"].astype(np.int64)}


@dataclass
class Segmentation:
    logits: np.ndarray  # 1 x M x M
    mask: np.ndarray  # H x W bool, original size


class Segmenter:
    """The same pre/post-processing for every backend, so parity compares only the graphs."""

    def __init__(self, runner: Runner, tokenizer, config: LGAConfig) -> None:
        self.runner, self.tokenizer, self.config = runner, tokenizer, config

    def text_embeddings(self, texts: list[str]) -> np.ndarray:
        feeds = tokenize(self.tokenizer, texts, self.config.max_text_length)
        return self.runner.infer("text_encoder", feeds)["text_embedding"]

    def image_logits(self, images: list[np.ndarray], embedding: np.ndarray) -> np.ndarray:
        """Mask logits for images whose text embeddings are already computed."""
        if len(images) != len(embedding):
            raise LGAError(f"{len(images)} images but {len(embedding)} texts; give one report per image")
        batch = np.stack([normalize(rgb, self.config) for rgb in images])
        return self.runner.infer("lga_image", {"image": batch, "text_embedding": embedding})["mask_logits"]

    def logits(self, images: list[np.ndarray], texts: list[str]) -> np.ndarray:
        if len(images) != len(texts):
            raise LGAError(f"{len(images)} images but {len(texts)} texts; give one report per image")
        return self.image_logits(images, self.text_embeddings(texts))

    def segment(self, images: list[np.ndarray], texts: list[str], threshold: float = 0.0) -> list[Segmentation]:
        logits = self.logits(images, texts)
        return [Segmentation(l, logits_to_mask(l, rgb.shape[:2], threshold)) for l, rgb in zip(logits, images)]
