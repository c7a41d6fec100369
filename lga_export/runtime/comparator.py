"""Run several runners over the same samples and compare each with the reference, per sample.

Export validation, lga-bench and the GPU tests all use this: every candidate's text
embeddings, its image graph on the reference's text embeddings (the image graph alone), and
its own chain of both graphs (end to end) are compared with the reference's outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from lga_export.contract import IMAGE_GRAPH, TEXT_GRAPH, Tolerance, tolerance
from lga_export.parity import Parity, compare, failures
from lga_export.runtime.base import Runner
from lga_export.runtime.pipeline import Segmenter


def chunks(count: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, count)) for start in range(0, count, size)]


@dataclass
class Outputs:
    """One runner's outputs over the samples (rows in sample order)."""

    text_embedding: np.ndarray
    logits: np.ndarray  # end to end: its own text embedding into its own image graph
    image_logits: np.ndarray | None = None  # its image graph on the reference's text embedding


def run_samples(runner: Runner, samples: list, batch: int, reference: Outputs | None = None,
                segmenter: Segmenter | None = None) -> Outputs:
    """Every sample through `runner` in chunks of `batch`; with `reference`, also the image graph
    alone on the reference's text embeddings."""
    segmenter = segmenter or Segmenter(runner)
    texts, logits, alone = [], [], []
    for part in chunks(len(samples), batch):
        group = samples[part]
        images = [s.rgb for s in group]
        embedding = segmenter.text_embeddings([s.text for s in group])
        texts.append(embedding)
        logits.append(segmenter.image_logits(images, embedding))
        if reference is not None:
            alone.append(segmenter.image_logits(images, reference.text_embedding[part]))
    return Outputs(np.concatenate(texts), np.concatenate(logits), np.concatenate(alone) if alone else None)


@dataclass
class PairParity:
    """A candidate against the reference: text graph, image graph alone, end to end."""

    reference: str
    candidate: str
    tolerance: Tolerance
    text: Parity
    end_to_end: Parity
    image: Parity | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        parts = {TEXT_GRAPH: self.text, IMAGE_GRAPH: self.image, "end_to_end": self.end_to_end}
        return {"reference": self.reference, "candidate": self.candidate, "passed": self.passed,
                "problems": self.problems, "atol": self.tolerance.atol, "min_dice": self.tolerance.min_dice,
                **{name: parity.to_dict() for name, parity in parts.items() if parity is not None}}


def compare_outputs(reference: Outputs, candidate: Outputs, names: list[str], tol: Tolerance,
                    labels: tuple[str, str] = ("reference", "candidate")) -> PairParity:
    """Parity of `candidate` against `reference`; problems name the part, the sample and how far off."""
    text = compare(reference.text_embedding, candidate.text_embedding)
    end_to_end = compare(reference.logits, candidate.logits, names, masks=True)
    image = None
    if candidate.image_logits is not None:
        image = compare(reference.logits, candidate.image_logits, names, masks=True)
    problems = [f"text_encoder: {p}" for p in failures(text, tol)]
    if image is not None:
        problems += [f"lga_image: {p}" for p in failures(image, tol)]
    # End to end the text difference propagates, so only mask agreement and NaN/Inf are gated there.
    problems += [f"end_to_end: {p}" for p in failures(end_to_end, tol, check_atol=False)]
    return PairParity(labels[0], labels[1], tol, text, end_to_end, image, problems)


def compare_runners(reference: Runner, candidates: Iterable[Runner], samples: list, batch: int,
                    reference_batch: int = 1) -> list[PairParity]:
    """Each (already active) candidate against the reference on the same samples, at its
    precision's tolerance. The reference runs `reference_batch` samples at a time (memory)."""
    names = [s.name for s in samples]
    ref = run_samples(reference, samples, reference_batch)
    return [compare_outputs(ref, run_samples(candidate, samples, batch, ref), names,
                            tolerance(candidate.precision), (reference.label, candidate.label))
            for candidate in candidates]
