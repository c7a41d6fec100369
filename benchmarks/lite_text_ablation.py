"""Does the report count? Val Dice of a trained `lite` checkpoint with each image's own report,
with another image's report (a fixed derangement), and with one generic report for every image.

Runs on the training run's cached encoder prefixes (`<run>/prefix_cache`, made by `lga-export
train`), so it costs a few seconds per 100 images. This is an inference-time ablation of the
trained model, not the paper's Table 2 (a model trained with a learnable query instead of text).

    python benchmarks/lite_text_ablation.py --run runs/lite-qata --data ../shared/data/qata-cov19 --limit 100
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

GENERIC = "Lung infection."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="Val")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()

    from dataclasses import replace

    from lga_export.checkpoint import load_lga_checkpoint
    from lga_export.data.lvit import index_split
    from lga_export.fileio import atomic_file
    from lga_export.training.evaluate import score_samples, summarize
    from lga_export.training.prefix_cache import PrefixCache
    from lga_export.training.text_cache import TextEmbedder

    model = load_lga_checkpoint(args.run / "best.safetensors")
    samples = index_split(args.data, args.split).samples[: args.limit]
    prefixes = PrefixCache(model, samples, args.run / "prefix_cache", args.split.lower())
    shifted = [samples[(i + 1) % len(samples)].text for i in range(len(samples))]
    variants = {"own report": [s.text for s in samples], "another image's report": shifted,
                f"one generic report ({GENERIC!r})": [GENERIC] * len(samples)}
    embedder = TextEmbedder(model, [t for texts in variants.values() for t in texts])
    results = {}
    for label, texts in variants.items():
        scored = score_samples(model, embedder, [replace(s, text=t) for s, t in zip(samples, texts)],
                               prefixes=prefixes)
        results[label] = {k: round(v, 4) if isinstance(v, float) else v for k, v in summarize(scored).items()}
        results[label]["dice_std"] = round(float(np.std([s.dice for s in scored])), 4)
        print(f"{label:<40} Dice {results[label]['dice']:.4f}  mIoU {results[label]['miou']:.4f}", flush=True)
    if args.out:
        with atomic_file(args.out, force=True) as tmp:  # a record is replaced whole or not at all
            tmp.write_text(json.dumps({"split": args.split, "samples": len(samples), "results": results}, indent=2))


if __name__ == "__main__":
    main()
