"""Where does a model lose its masks at reduced precision, and is it the precision at all?

    python benchmarks/precision_sensitivity.py [--checkpoint FILE] [--samples 8] [--out FILE.json]

PyTorch only, on QaTa Val images (the built-in samples without ../shared): the FP32 masks against
(1) BF16 autocast of one part of the model at a time (the image encoder's patch embedding, each
stage, the fusion modules with the later stages, the decoder, the text branch) and of the whole
model, and (2) FP32 runs on inputs perturbed far below what a viewer sees: the normalised image
rounded to BF16 or FP16, and uniform noise of +-half a grey level (1/510 of the range). When
noise alone moves the masks as much as BF16 does, the model is what is sensitive, not the
arithmetic: keeping a few layers in FP32 cannot make such a model pass a 0.99 agreement gate.
For a model whose first stages can be cached in training (`encode_prefix`, lite), also: how far
BF16 and the input noise move those stages' output tokens (relative RMS), and how the masks move when
i.i.d. Gaussian noise of a given size is added to the FP32 tokens instead, which is what
`lga-export train --prefix-noise` trains against.
Prints one line per case (worst and mean mask Dice agreement with FP32, per image) and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def agreement(reference: torch.Tensor, candidate: torch.Tensor) -> list[float]:
    """Per-image Dice between the two models' masks (logits > 0): the parity gates' own measure."""
    from lga_export.verify.metrics import mask_agreement

    return mask_agreement(reference.numpy(), candidate.numpy())


@contextmanager
def bf16_parts(modules: list[torch.nn.Module]):
    """Run the forward of each module under BF16 autocast (outputs cast back to FP32)."""
    saved = [(m, m.forward) for m in modules]
    for module, forward in saved:
        def wrapped(*args, _forward=forward, **kwargs):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = _forward(*args, **kwargs)
            if isinstance(out, tuple):
                return tuple(o.float() if torch.is_tensor(o) else o for o in out)
            return out.float() if torch.is_tensor(out) else out
        module.forward = wrapped
    try:
        yield
    finally:
        for module, forward in saved:
            module.forward = forward


def parts(model) -> dict[str, list[torch.nn.Module]]:
    """Named groups of modules to run in BF16, for both families."""
    encoder = model.image_encoder
    groups: dict[str, list[torch.nn.Module]] = {"patch_embed": [encoder.patch_embed]}
    stages = getattr(encoder, "layers", None) or getattr(encoder, "blocks", [])
    for index, stage in enumerate(stages):
        groups[f"encoder stage/block {index}"] = [stage] if not hasattr(stage, "blocks") else list(stage.blocks) + (
            [stage.downsample] if getattr(stage, "downsample", None) is not None else [])
    groups["fusion modules"] = list(model.ffms)
    decoder = model.mask_decoder  # run piecewise by the prompt-free decode, not through its forward
    groups["mask decoder"] = [decoder.transformer, decoder.output_upscaling, *decoder.output_hypernetworks_mlps]
    groups["text branch"] = [model.text_encoder]
    groups["whole model"] = [model]
    return groups


def flip_margins(reference: torch.Tensor, candidate: torch.Tensor) -> list[dict]:
    """Per image: how many pixels change side between the FP32 and the candidate masks, and how
    close to the threshold their FP32 logits were (a knife edge shows as many pixels near 0)."""
    result = []
    for ref, cand in zip(reference, candidate):
        flipped = (ref > 0) != (cand > 0)
        margin = ref[flipped].abs()
        p95 = float(margin.quantile(0.95)) if margin.numel() else 0.0
        result.append({"flipped": int(flipped.sum()), "foreground": int((ref > 0).sum()),
                       "p95_abs_logit_flipped": p95, "pixels_below_that": int((ref.abs() < p95).sum())})
    return result


def prefix_cases(model, images: torch.Tensor, noise: torch.Tensor, tokens) -> dict:
    """Relative RMS change of the cached-prefix tokens under BF16 and input noise, and the masks'
    agreement when FP32 tokens get Gaussian noise of 2-20% of their RMS instead."""
    with torch.no_grad():
        text = model.encode_text(tokens["input_ids"], tokens["attention_mask"])
        clean = model.encode_prefix(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model.encode_prefix(images).float()
        noisy = model.encode_prefix(images + noise)
        reference = model.forward_suffix(clean, text).float()
        rms = clean.pow(2).mean().sqrt()
        result: dict = {"BF16 prefix": float((bf16 - clean).pow(2).mean().sqrt() / rms),
                        "input +- half a grey level": float((noisy - clean).pow(2).mean().sqrt() / rms), "cases": {}}
        generator = torch.Generator().manual_seed(1)
        for relative in (0.02, 0.05, 0.1, 0.2):
            perturbed = clean + torch.randn(clean.shape, generator=generator) * rms * relative
            result["cases"][f"FP32, prefix tokens + {relative:.0%} RMS Gaussian"] = agreement(
                reference, model.forward_suffix(perturbed, text).float())
    print(f"prefix tokens move by {result['BF16 prefix']:.1%} of their RMS in BF16, "
          f"{result['input +- half a grey level']:.1%} with the input noise", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    from lga_export.errors import LGAError
    from lga_export.fileio import atomic_file
    from lga_export.loading import load_model
    from lga_export.modeling.text_encoder import load_tokenizer
    from lga_export.preprocess import normalize
    from lga_export.samples import default_data_root, validation_samples

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="LGA checkpoint (default: the embedded default model).")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--data", type=Path, default=None, help="Data root with qata-cov19/ (default: "
                        "../shared/data when present, else the built-in samples).")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    try:
        model = load_model(None, args.checkpoint).eval()
        samples, source = validation_samples(args.samples, args.data or default_data_root())
    except LGAError as exc:
        parser.error(str(exc))
    tokens = load_tokenizer(model.config.text_model)([s.text for s in samples], padding="max_length",
                                                     truncation=True, max_length=model.config.max_text_length,
                                                     return_tensors="pt")
    images = torch.from_numpy(np.stack([normalize(s.rgb, model.config) for s in samples]))
    span = float(images.max() - images.min())

    def run(pixels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(pixels, tokens["input_ids"], tokens["attention_mask"]).float()

    reference = run(images)
    cases: dict[str, list[float]] = {}
    margins: list[dict] = []
    for name, modules in parts(model).items():
        with bf16_parts(modules):
            candidate = run(images)
        cases[f"BF16 {name}"] = agreement(reference, candidate)
        if name == "whole model":
            margins = flip_margins(reference, candidate)
    cases["FP32, input rounded to BF16"] = agreement(reference, run(images.bfloat16().float()))
    cases["FP32, input rounded to FP16"] = agreement(reference, run(images.half().float()))
    noise = (torch.rand_like(images) - 0.5) * (span / 255.0)
    cases["FP32, input +- half a grey level"] = agreement(reference, run(images + noise))
    prefix = prefix_cases(model, images, noise, tokens) if hasattr(model, "encode_prefix") else {}
    cases.update(prefix.pop("cases", {}))
    for image, margin in zip(samples, margins):
        print(f"BF16 whole model flips {margin['flipped']} of {margin['foreground']} foreground pixels on {image.name}; "
              f"95% of them had |FP32 logit| < {margin['p95_abs_logit_flipped']:.3f}, which "
              f"{margin['pixels_below_that']} pixels of the image have", flush=True)
    for name, scores in cases.items():
        print(f"{name:40s} worst {min(scores):.4f} mean {sum(scores) / len(scores):.4f} "
              f"per image {[round(s, 3) for s in scores]}", flush=True)
    record = {"model": model.config.preset, "checkpoint": str(args.checkpoint or "embedded default"),
              "samples": source, "images": [s.name for s in samples],
              "foreground_fraction_fp32": [float((r > 0).float().mean()) for r in reference], "cases": cases,
              "prefix_relative_rms_change": prefix, "bf16_whole_model_flips": margins}
    if args.out:
        with atomic_file(args.out, force=True) as tmp:  # a record is replaced whole or not at all
            tmp.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
