"""Several runners over the same samples, for comparison: the outputs `verify.comparator` judges.

Kept in the runtime because it drives runners through the Segmenter; the judging itself
(parity, tolerances) is in `lga_export.verify`, which never opens a runner.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from lga_export.contract import tolerance
from lga_export.runtime.base import Runner
from lga_export.runtime.pipeline import Segmenter
from lga_export.verify.comparator import Outputs, PairParity, compare_outputs


def chunks(count: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, count)) for start in range(0, count, size)]


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


def compare_runners(reference: Runner, candidates: Iterable[Runner], samples: list, batch: int,
                    reference_batch: int = 1) -> list[PairParity]:
    """Each (already active) candidate against the reference on the same samples, at its
    precision's tolerance. The reference runs `reference_batch` samples at a time (memory)."""
    names = [s.name for s in samples]
    ref = run_samples(reference, samples, reference_batch)
    return [compare_outputs(ref, run_samples(candidate, samples, batch, ref), names,
                            tolerance(candidate.precision), (reference.label, candidate.label))
            for candidate in candidates]
