"""`lga-export train` and `lga-export eval`: thin wrappers over lga_export.training."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

from lga_export.cli.common import (NumFfmsOption, SamCheckpointOption, TextMlpOption, TextModelOption, VitMlpOption,
                                   ablation_overrides, quiet_libraries, user_errors)

DataOption = typer.Option(..., "--data", help="Dataset root in the LViT layout: <root>/{Train,Val,Test}_Folder/{img,labelcol}.")


def train(
    preset: Optional[str] = typer.Option(None, "--preset", "-p", help="Model preset: vit_b (the paper), vit_l, "
                                         "vit_h, tiny, lite (LiteMedSAM's pretrained encoder; default: lite, or the "
                                         "saved run's with --resume or --init-from)."),
    data: Path = DataOption,
    out: Path = typer.Option(..., "--out", help="Run folder: best.safetensors, last/, metrics, learning curve."),
    sam_checkpoint: Optional[Path] = SamCheckpointOption,
    text_model: Optional[str] = TextModelOption,
    epochs: int = typer.Option(50, "--epochs", min=1, help="Epochs (paper: 50)."),
    batch_size: int = typer.Option(2, "--batch-size", min=1, help="Batch size (paper: 2)."),
    lr: float = typer.Option(1e-4, "--lr", help="Peak AdamW learning rate (paper: 1e-4)."),
    weight_decay: float = typer.Option(1e-3, "--weight-decay", help="AdamW weight decay (paper: 1e-3)."),
    warmup_steps: int = typer.Option(1000, "--warmup-steps", min=0, help="Linear warm-up steps (paper: 1000)."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Model input size (default: the preset's)."),
    train_encoder: bool = typer.Option(False, "--train-encoder", help="Train the ViT too (tiny always does)."),
    train_encoder_stages: Optional[int] = typer.Option(None, "--train-encoder-stages", min=0, help="lite: train the "
                                                       "encoder's last N stages and its neck as well (those with an "
                                                       "FFM at their input; the earlier ones stay frozen and "
                                                       "cached). 0: the paper's frozen encoder."),
    encoder_lr: Optional[float] = typer.Option(None, "--encoder-lr", min=0.0, help="Peak learning rate of the "
                                               "trained encoder weights (default: --lr)."),
    learnable_query: bool = typer.Option(False, "--learnable-query", help="A learned query replaces the text (Table 2)."),
    num_ffms: Optional[int] = NumFfmsOption,
    text_mlp: Optional[bool] = TextMlpOption,
    vit_mlp: Optional[bool] = VitMlpOption,
    grad_clip: Optional[float] = typer.Option(None, "--grad-clip", help="Clip the gradient norm (off in the paper)."),
    no_augment: bool = typer.Option(False, "--no-augment", help="Turn augmentation off."),
    input_noise: float = typer.Option(0.0, "--input-noise", min=0.0, help="Augmentation: per-pixel uniform noise "
                                      "of up to this many grey levels (0-255 scale; the level is drawn per image "
                                      "from 0; with --no-augment, the only augmentation). Teaches robustness to "
                                      "perturbations as small as BF16's."),
    seed: int = typer.Option(0, "--seed", help="Seed for init, shuffling and augmentation."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run saved in --out/last."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", min=1, help="Stop after this many steps in total."),
    limit_train: Optional[int] = typer.Option(None, "--limit-train", min=1, help="Use only the first N training samples."),
    limit_val: Optional[int] = typer.Option(None, "--limit-val", min=1, help="Use only the first N validation samples."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Leave out broken samples (counted) instead of failing."),
    force: bool = typer.Option(False, "--force", help="Start over in an --out that already holds a run."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads for torch."),
    bf16: bool = typer.Option(False, "--bf16", help="BF16 autocast for the forward pass (2-3x faster on CPUs "
                              "with native BF16: avx512_bf16 or AMX)."),
    no_prefix_cache: bool = typer.Option(False, "--no-prefix-cache", help="Recompute the frozen encoder stages "
                                         "before the first FFM every step (by default, with --no-augment and a "
                                         "frozen lite encoder, they are computed once per image and cached)."),
    val_every: Optional[int] = typer.Option(None, "--val-every", min=1, help="Also validate every N steps."),
    init_from: Optional[Path] = typer.Option(None, "--init-from", help="Fine-tune: start from this LGA checkpoint's "
                                             "weights (a run's best.safetensors) with a fresh optimizer and "
                                             "schedule; its preset and config come with it."),
    prefix_noise: float = typer.Option(0.0, "--prefix-noise", min=0.0, help="Train with Gaussian noise on the "
                                       "cached prefix tokens, per image up to this fraction of their RMS (0.15: "
                                       "robust to the 7-9% that BF16 or input noise cause there; needs the "
                                       "prefix cache)."),
) -> None:
    """Train an LGA model (paper §3.2 recipe by default), validating every epoch."""
    quiet_libraries()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import torch

    from lga_export.errors import LGAError
    from lga_export.loading import resolve_config
    from lga_export.training.loop import TrainSettings, train as run_training

    if threads:
        torch.set_num_threads(threads)
    if resume and force:
        raise LGAError("give either --resume or --force, not both")
    overrides = ablation_overrides(text_model, num_ffms, text_mlp, vit_mlp, learnable_query)
    overrides["image_size"] = image_size
    if train_encoder:
        overrides["train_image_encoder"] = True
    overrides["train_encoder_stages"] = train_encoder_stages
    given = preset is not None or any(v is not None for v in overrides.values())
    if init_from is not None and resume:
        raise LGAError("give either --init-from (a new run from a checkpoint) or --resume, not both")
    config = resolve_config(preset, None, overrides) if given or not (resume or init_from) else None
    settings = TrainSettings(data=data, out=out, epochs=epochs, batch_size=batch_size, lr=lr,
                             weight_decay=weight_decay, warmup_steps=warmup_steps, seed=seed, max_steps=max_steps,
                             augment=not no_augment, grad_clip=grad_clip, train_limit=limit_train,
                             val_limit=limit_val, skip_bad=skip_bad, resume=resume, force=force, bf16=bf16,
                             prefix_cache=not no_prefix_cache, val_every=val_every,
                             init_from=init_from, prefix_noise=prefix_noise, encoder_lr=encoder_lr,
                             input_noise=input_noise)
    summary = run_training(config, settings, sam_checkpoint)
    final = summary["final"] or {}
    typer.echo(f"done: {summary['steps_done']} steps, best val Dice {summary['best_val_dice']:.4f} "
               f"(step {summary['best_step']}), last val mIoU {final.get('val_miou', float('nan')):.4f}; "
               f"{summary['best_checkpoint']}")


def evaluate(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="LGA checkpoint (.safetensors)."),
    data: Path = DataOption,
    split: str = typer.Option("Val", "--split", help="Split to score: Train, Val or Test."),
    out: Path = typer.Option(Path("runs/eval"), "--out", help="Folder for per_sample.csv, cases.png, summary.json."),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Score only the first N samples."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Leave out broken samples (counted) instead of failing."),
    force: bool = typer.Option(False, "--force", help="Overwrite earlier eval outputs in --out."),
) -> None:
    """Dice and mIoU of a checkpoint over a split, per-sample CSV, best/worst figure, JSON summary."""
    quiet_libraries()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from lga_export.training.eval_checkpoint import evaluate_checkpoint

    summary = evaluate_checkpoint(checkpoint, data, split, out, batch_size=batch_size, limit=limit,
                                  skip_bad=skip_bad, force=force)
    typer.echo(f"{summary['split']}: Dice {summary['dice']:.4f}, mIoU {summary['miou']:.4f} over "
               f"{summary['samples']} samples; outputs in {out}")


def half(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="LGA checkpoint (.safetensors)."),
    out: Path = typer.Option(..., "--out", "-o", help="The FP16 copy (.safetensors)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out."),
) -> None:
    """Store a checkpoint's weights in FP16: half the file (a trained lite encoder: 41 -> 21 MB).
    The copy loads into the FP32 model with its weights rounded, so evaluate the copy, not the original."""
    quiet_libraries()
    from lga_export.checkpoint import load_lga_checkpoint, save_lga_checkpoint
    from lga_export.errors import LGAError

    if out.resolve() == checkpoint.resolve():
        raise LGAError("--out is the checkpoint itself; give another file")
    model = load_lga_checkpoint(checkpoint)
    save_lga_checkpoint(model, out, force=force, half=True)
    # read the copy back: it must load, and only what it stores may have moved (by the rounding)
    original, copy = model.state_dict(), load_lga_checkpoint(out).state_dict()
    rounded = max((float((original[k] - copy[k]).abs().max()) for k in original
                   if original[k].is_floating_point() and original[k].numel()), default=0.0)
    typer.echo(f"{out}: {out.stat().st_size / 1e6:.1f} MB (was {checkpoint.stat().st_size / 1e6:.1f} MB); "
               f"largest weight change {rounded:.2e}")


def register(app: typer.Typer) -> None:
    """Add `train`, `eval` and `half` to the `lga-export` app."""
    app.command("train")(user_errors(train))
    app.command("eval")(user_errors(evaluate))
    app.command("half")(user_errors(half))
