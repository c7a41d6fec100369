"""Where end-to-end time goes outside the graphs (issue #20 item 4: end to end <= 1.1x the graphs).

    python benchmarks/e2e_breakdown.py EXPORT_DIR [--backend ov] [--precision bf16] [--batch 1]
        [--iters 30] [--threads N] [--data DATA_ROOT] [--out FILE.json]

lga-bench times the text graph alone, the image graph alone and `Segmenter.segment` (tokenise,
preprocess, both graphs, masks at the original size). This runs the same three, interleaved, and
a fourth: segment's steps one by one in segment's order with a clock between them, so the
difference between end to end and the sum of the graphs splits into tokenising, preprocessing,
postprocessing and graphs that run slower inside the sequence than alone (threads that went to
sleep between calls). Prints medians in ms and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lga_export.contract import IMAGE_GRAPH, TEXT_GRAPH, image_feeds  # noqa: E402
from lga_export.errors import LGAError  # noqa: E402
from lga_export.fileio import atomic_file  # noqa: E402
from lga_export.resample import logits_to_mask  # noqa: E402
from lga_export.runtime.pipeline import Segmenter  # noqa: E402
from lga_export.runtime.registry import open_runner  # noqa: E402
from lga_export.samples import default_data_root, validation_samples  # noqa: E402


def _clock(call) -> float:
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1000.0


def _steps(segmenter: Segmenter, rgbs, texts) -> dict[str, float]:
    """segment()'s steps in its order, each timed."""
    runner, times, now = segmenter.runner, {}, time.perf_counter()

    def lap(name: str) -> None:
        nonlocal now
        times[name] = (time.perf_counter() - now) * 1000.0
        now = time.perf_counter()

    feeds = segmenter.text_feeds(texts)
    lap("tokenise")
    embedding = runner.infer(TEXT_GRAPH, feeds)[segmenter.text_output]
    lap("text graph")
    pixels = segmenter.image_batch(rgbs)
    lap("preprocess")
    logits = runner.infer(IMAGE_GRAPH, image_feeds(pixels, embedding))[segmenter.image_output]
    lap("image graph")
    [logits_to_mask(l, rgb.shape[:2], 0.0) for l, rgb in zip(logits, rgbs)]
    lap("postprocess")
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", type=Path)
    parser.add_argument("--backend", default="ov")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    options = {"threads": args.threads} if args.threads else {}
    try:
        runner = open_runner(args.backend, args.export, args.precision, self_check="off", **options)
        samples, source = validation_samples(args.batch, args.data or default_data_root())
    except LGAError as exc:
        parser.error(str(exc))
    segmenter = Segmenter(runner)
    rgbs, texts = [s.rgb for s in samples], [s.text for s in samples]
    text_feeds = segmenter.text_feeds(texts)
    embedding = runner.infer(TEXT_GRAPH, text_feeds)[segmenter.text_output]
    feeds = image_feeds(segmenter.image_batch(rgbs), embedding)
    runs: dict[str, list[float]] = {}
    for index in range(args.iters + 2):  # two warm-up rounds
        round_times = {"text graph alone": _clock(lambda: runner.infer(TEXT_GRAPH, text_feeds)),
                       "image graph alone": _clock(lambda: runner.infer(IMAGE_GRAPH, feeds)),
                       "end to end": _clock(lambda: segmenter.segment(rgbs, texts))}
        round_times.update({f"in sequence: {k}": v for k, v in _steps(segmenter, rgbs, texts).items()})
        if index >= 2:
            for name, value in round_times.items():
                runs.setdefault(name, []).append(value)
    medians = {name: statistics.median(values) for name, values in runs.items()}
    graphs_alone = medians["text graph alone"] + medians["image graph alone"]
    for name, value in medians.items():
        print(f"{name:36s} {value:9.2f} ms")
    print(f"end to end / graphs alone: {medians['end to end'] / graphs_alone:.3f}")
    record = {"backend": args.backend, "precision": args.precision, "batch": args.batch, "iters": args.iters,
              "samples": source, "description": runner.description().to_dict(), "median_ms": medians,
              "end_to_end_over_graphs_alone": medians["end to end"] / graphs_alone}
    if args.out:
        with atomic_file(args.out, force=True) as tmp:  # a record is replaced whole or not at all
            tmp.write_text(json.dumps(record, indent=2) + "\n")
    runner.deactivate()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
