"""How much could moving the mask threshold buy? Dice of a checkpoint over a split with the logit
threshold shifted (0 = the shipped rule, logit > 0), every shift scored on the same logits.

Choosing the shift on the split it is scored on is an oracle: the best figure is an upper bound
on what calibrating the threshold (on training data) could gain, not a result to ship.

    python benchmarks/threshold_bound.py --checkpoint lga_export/assets/default_model/lga_lite_qata.safetensors \
        --data ../shared/data/qata-cov19 --split Val --out threshold.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

SHIFTS = (-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="Val")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()

    from lga_export.checkpoint import load_lga_checkpoint
    from lga_export.data.lvit import index_split
    from lga_export.errors import LGAError
    from lga_export.fileio import atomic_file
    from lga_export.imageio import read_mask
    from lga_export.training.evaluate import predict_logits
    from lga_export.training.text_cache import TextEmbedder
    from lga_export.verify.metrics import score_logits

    try:
        model = load_lga_checkpoint(args.checkpoint)
        samples = index_split(args.data, args.split).samples[: args.limit]
    except LGAError as exc:
        parser.error(str(exc))
    embedder = TextEmbedder(model, [s.text for s in samples])
    dice: dict[float, list[float]] = {shift: [] for shift in SHIFTS}
    for sample, logits in predict_logits(model, embedder, samples, batch_size=4, progress=True):
        truth = read_mask(sample.mask)
        for shift in SHIFTS:
            dice[shift].append(score_logits(logits - shift, truth)[0])
    means = {f"{shift:+.2f}": round(float(np.mean(values)), 4) for shift, values in dice.items()}
    for shift, value in means.items():
        print(f"logit > {shift}: Dice {value:.4f}")
    if args.out:
        with atomic_file(args.out, force=True) as tmp:  # a record is replaced whole or not at all
            tmp.write_text(json.dumps({"checkpoint": str(args.checkpoint), "split": args.split,
                                       "samples": len(samples), "dice_by_threshold": means}, indent=2) + "\n")


if __name__ == "__main__":
    main()
