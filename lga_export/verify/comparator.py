"""Compare a candidate's outputs with the reference's, per sample.

Export validation, lga-bench, the runtime's self-check and the GPU tests all use this: every
candidate's text embeddings, its image graph on the reference's text embeddings (the image
graph alone), and its own chain of both graphs (end to end) are compared with the reference's
outputs. Producing the outputs (runners over samples) is the runtime's job:
`lga_export.runtime.sample_runs`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lga_export.contract import IMAGE_GRAPH, TEXT_GRAPH, Tolerance
from lga_export.verify.parity import Parity, compare, failures


@dataclass
class Outputs:
    """One runner's outputs over the samples (rows in sample order)."""

    text_embedding: np.ndarray
    logits: np.ndarray  # end to end: its own text embedding into its own image graph
    image_logits: np.ndarray | None = None  # its image graph on the reference's text embedding


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
