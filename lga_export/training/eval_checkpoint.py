"""`lga-export eval`: score a checkpoint on a split and write the per-sample CSV, a figure of
the best and worst cases, and a JSON summary."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from lga_export.errors import LGAError
from lga_export.fileio import atomic_files

OUTPUTS = ("per_sample.csv", "cases.png", "summary.json")


def evaluate_checkpoint(checkpoint: Path, data: Path, split: str, out: Path, *, batch_size: int = 8,
                        limit: int | None = None, cases: int = 3, skip_bad: bool = False,
                        force: bool = False, progress: bool = True) -> dict[str, Any]:
    from lga_export.checkpoint import load_lga_checkpoint
    from lga_export.data.lvit import index_split
    from lga_export.training.evaluate import score_samples, summarize
    from lga_export.training.plots import cases_figure
    from lga_export.training.text_cache import TextEmbedder

    out = Path(out)
    existing = [name for name in OUTPUTS if (out / name).exists()]
    if existing and not force:
        raise LGAError(f"{out} already holds {', '.join(existing)}; pass --force to overwrite")
    index = index_split(data, split, skip_bad=skip_bad)
    samples = index.samples[:limit]
    model = load_lga_checkpoint(checkpoint)
    embedder = TextEmbedder(model, [s.text for s in samples])
    scores = score_samples(model, embedder, samples, batch_size, progress)

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["name", "dice", "iou", "text"])
    for s in scores:
        writer.writerow([s.name, f"{s.dice:.6f}", f"{s.iou:.6f}", s.text])
    picks, figure = _figure_cases(model, embedder, samples, scores, cases)
    summary = {"checkpoint": str(checkpoint), "data": str(data), "split": index.split, **summarize(scores),
               "skipped": index.skipped, "preset": model.config.preset,
               "text_source": model.config.text_source,
               "best": [scores[i].name for _, i in picks if _ == "best"],
               "worst": [scores[i].name for _, i in picks if _ == "worst"]}
    # the three files are staged and published together, like predict's: a failure leaves none of them
    with atomic_files(out, list(OUTPUTS), force=force) as staged:
        staged["per_sample.csv"].write_text(buffer.getvalue())
        cases_figure(figure, staged["cases.png"], force=True)
        staged["summary.json"].write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _figure_cases(model: Any, embedder: Any, samples: list[Any], scores: list[Any],
                  cases: int) -> tuple[list[tuple[str, int]], list[dict[str, Any]]]:
    """The best and worst `cases` samples by Dice: (label, score index) picks and the figure's rows."""
    from lga_export.imageio import read_image, read_mask
    from lga_export.resample import logits_to_mask
    from lga_export.training.evaluate import predict_logits

    ranked = sorted(range(len(scores)), key=lambda i: scores[i].dice)
    n = min(cases, max(1, len(scores) // 2))
    picks = [("best", i) for i in reversed(ranked[-n:])] + [("worst", i) for i in ranked[:n]]
    by_name = {s.name: s for s in samples}
    figure = []
    for label, i in picks:
        sample = by_name[scores[i].name]
        target = read_mask(sample.mask)
        logits = next(l for _, l in predict_logits(model, embedder, [sample], 1))
        figure.append({"label": label, "name": sample.name, "text": sample.text, "picture": read_image(sample.image),
                       "target": target, "pred": logits_to_mask(logits, target.shape), "dice": scores[i].dice})
    return picks, figure
