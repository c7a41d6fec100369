"""Validate an export folder against the PyTorch model on real inputs, per graph and sample.

The batch size differs from the traced one, so a batch dimension baked into a constant
fails here instead of in production.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import numpy as np

from lga_export.export.specs import graph_specs
from lga_export.parity import Parity, compare, failures
from lga_export.preprocess import normalize
from lga_export.runtime.ort_runner import OnnxRuntimeRunner
from lga_export.runtime.pipeline import tokenize
from lga_export.runtime.torch_runner import TorchRunner
from lga_export.samples import validation_samples


def _entry(parity: Parity, atol: float | None, min_dice: float | None, names: list[str]) -> dict[str, Any]:
    problems = failures(parity, atol, min_dice)
    entry = parity.to_dict()
    entry.update(atol=atol, min_dice=min_dice, passed=not problems, problems=problems)
    if parity.worst_sample is not None:
        entry["worst_sample_name"] = names[parity.worst_sample]
    return entry


def _one_by_one(runner, graph: str, feeds: dict[str, np.ndarray], output: str) -> np.ndarray:
    """The reference runs sample by sample: a ViT-H at 1024 px would not fit a batch in memory."""
    count = next(iter(feeds.values())).shape[0]
    return np.concatenate([runner.infer(graph, {k: v[i:i + 1] for k, v in feeds.items()})[output]
                           for i in range(count)])


def validate_export(model, export_dir: Path, tokenizer, precisions: list[str], batch: int,
                    data_root: Path | None = None) -> dict[str, Any]:
    """Figures for every graph and precision; `passed` is False when any threshold is missed."""
    config = model.config
    text_spec, image_spec = graph_specs(config)
    samples, source = validation_samples(batch, data_root)
    names = [s.name for s in samples]
    text_feeds = tokenize(tokenizer, [s.text for s in samples], config.max_text_length)
    images = np.stack([normalize(s.rgb, config) for s in samples])
    with TorchRunner(model) as reference:
        ref_text = reference.infer(text_spec.name, text_feeds)[text_spec.output_names[0]]
        image_feeds = {"image": images, "text_embedding": ref_text}
        ref_logits = _one_by_one(reference, image_spec.name, image_feeds, image_spec.output_names[0])
    gc.collect()
    report: dict[str, Any] = {"batch": batch, "samples": names, "source": source, "results": {}}
    for precision in precisions:
        with OnnxRuntimeRunner(export_dir, precision, low_memory=True) as runner:
            text = runner.infer(text_spec.name, text_feeds)[text_spec.output_names[0]]
            logits = runner.infer(image_spec.name, image_feeds)[image_spec.output_names[0]]
            chained = runner.infer(image_spec.name, {"image": images, "text_embedding": text})
            providers = runner.providers_in_use()
        report["results"][precision] = {
            "providers": providers,
            text_spec.name: _entry(compare(ref_text, text, masks=False), text_spec.atol.get(precision), None, names),
            image_spec.name: _entry(compare(ref_logits, logits, masks=True), image_spec.atol.get(precision),
                                    image_spec.min_dice.get(precision), names),
            "end_to_end": _entry(compare(ref_logits, chained[image_spec.output_names[0]], masks=True), None,
                                 image_spec.min_dice.get(precision), names),
        }
    report["passed"] = all(entry["passed"] for result in report["results"].values()
                           for key, entry in result.items() if key != "providers")
    return report


def failure_lines(report: dict[str, Any]) -> list[str]:
    """One line per failed check: which graph, which precision, which sample, how far off."""
    lines = []
    for precision, result in report["results"].items():
        for graph, entry in result.items():
            if graph != "providers" and not entry["passed"]:
                where = f", worst sample {entry.get('worst_sample_name')}" if entry.get("worst_sample_name") else ""
                lines.append(f"{graph} ({precision}){where}: {'; '.join(entry['problems'])}")
    return lines
