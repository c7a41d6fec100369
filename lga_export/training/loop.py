"""The training run: paper §3.2 recipe by default, validation every epoch, best-by-Dice
checkpoint, resumable `last` state, per-epoch metrics and a learning curve.

Deterministic on the CPU for a given seed: model init from `torch.manual_seed(seed)`, the
shuffle from a generator seeded by (seed, epoch), augmentation by (seed, epoch, index).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from lga_export.config import LGAConfig
from lga_export.data.augment import AugmentConfig
from lga_export.errors import Interrupted, LGAError
from lga_export.fileio import atomic_file
from lga_export.training.step import train_step

log = logging.getLogger(__name__)

BEST_FILE = "best.safetensors"
_RECIPE_FIELDS = ("epochs", "batch_size", "lr", "weight_decay", "warmup_steps", "seed", "augment", "grad_clip",
                  "train_split", "val_split", "train_limit", "val_limit", "bf16", "prefix_cache",
                  "init_from", "prefix_noise", "encoder_lr", "input_noise")  # must not change on --resume
# Config fields that change only what trains: --init-from may change them (fine-tune more or less)
_FREEZING_FIELDS = ("train_encoder_stages", "train_image_encoder")
OUTPUT_FILES = (BEST_FILE, "metrics.csv", "metrics.jsonl", "steps.csv", "learning_curve.png", "train.json")


@dataclass(frozen=True)
class TrainSettings:
    """Paper defaults: AdamW lr 1e-4 wd 1e-3, batch 2, 50 epochs, 1000 warm-up iterations."""

    data: Path
    out: Path
    epochs: int = 50
    batch_size: int = 2
    lr: float = 1e-4
    weight_decay: float = 1e-3
    warmup_steps: int = 1000
    seed: int = 0
    max_steps: int | None = None  # stop (and save) after this many steps in total
    augment: bool = True
    grad_clip: float | None = None
    train_split: str = "Train"
    val_split: str = "Val"
    train_limit: int | None = None  # first N samples only (smoke runs, tests)
    val_limit: int | None = None
    skip_bad: bool = False
    save_every: int = 100  # steps between `last` saves (also saved at every epoch end and stop)
    log_every: int = 10
    eval_batch_size: int = 8
    bf16: bool = False  # BF16 autocast for the forward pass (CPUs with native BF16)
    prefix_cache: bool = True  # cache the frozen stages before the first FFM (needs augment off)
    val_every: int | None = None  # validate every N steps as well as at each epoch end
    init_from: Path | None = None  # start from this LGA checkpoint's weights (fine-tuning) instead of the init
    prefix_noise: float = 0.0  # Gaussian noise on cached prefix tokens, up to this x their RMS (step.perturb_prefix)
    encoder_lr: float | None = None  # peak learning rate of trained image-encoder weights (default: lr)
    input_noise: float = 0.0  # augmentation: per-pixel noise up to this many grey levels (augment.pixel_noise)
    resume: bool = False
    force: bool = False
    progress: bool = True


def _prepare_out(settings: TrainSettings) -> None:
    out = settings.out
    existing = [name for name in OUTPUT_FILES + ("last",) if (out / name).exists()]
    if settings.resume:
        return
    if existing and not settings.force:
        raise LGAError(f"{out} already holds a run ({', '.join(existing)}); pass --resume to continue it "
                       f"or --force to start over")
    for name in existing:
        target = out / name
        if target.is_dir():
            import shutil
            shutil.rmtree(target)
        else:
            target.unlink()


def _write_text(path: Path, text: str) -> None:
    with atomic_file(path, force=True) as tmp:
        tmp.write_text(text)


def _write_metrics(out: Path, history: list[dict[str, Any]], steps: list[dict[str, Any]]) -> None:
    from lga_export.training.plots import learning_curve

    if history:
        keys = list(history[0])
        _write_text(out / "metrics.csv", ",".join(keys) + "\n" +
                    "".join(",".join(str(row[k]) for k in keys) + "\n" for row in history))
        _write_text(out / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in history))
    if steps:
        _write_text(out / "steps.csv", "step,loss,lr\n" +
                    "".join(f"{s['step']},{s['loss']:.6f},{s['lr']:.3e}\n" for s in steps))
    learning_curve(history, steps, out / "learning_curve.png")


def train(config: LGAConfig | None, settings: TrainSettings, sam_checkpoint: Path | None = None) -> dict[str, Any]:
    """Run (or resume) training; returns the summary also written to <out>/train.json.

    `config`: the model to train (None with --resume: the saved run's). Everything is checked
    before the first step; a run that fails before its first checkpoint leaves no --out folder.
    """
    out = Path(settings.out)
    created = not out.exists()
    try:
        return _train(config, settings, sam_checkpoint)
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise


def _model_to_fine_tune(path: Path, config: LGAConfig | None, sam_checkpoint: Path | None):
    """The model saved in `path`, to train further under a new schedule (the saved run's own
    optimizer state is not used: that is --resume)."""
    from lga_export.checkpoint import load_lga_checkpoint

    if not path.is_file():
        raise LGAError(f"--init-from {path}: no such checkpoint; give an LGA .safetensors file (e.g. a run's "
                       f"best.safetensors)")
    if sam_checkpoint:
        raise LGAError("--init-from already holds the image encoder's weights; drop --sam-checkpoint")
    from lga_export.build import apply_freezing

    model = load_lga_checkpoint(path)
    if config is not None and config != model.config:
        changed = [k for k in dataclasses.asdict(config) if getattr(config, k) != getattr(model.config, k)]
        if not set(changed) <= set(_FREEZING_FIELDS):
            raise LGAError(f"--init-from {path.name} holds a {model.config.preset} model; the options change "
                           f"{changed} - drop them or give a checkpoint of that model")
        model.config = config  # the same weights, more or fewer of them trained
        apply_freezing(model)
    return model


def _train(config: LGAConfig | None, settings: TrainSettings, sam_checkpoint: Path | None) -> dict[str, Any]:
    from lga_export.data.lvit import index_split

    out = Path(settings.out)
    if out.exists() and not out.is_dir():
        raise LGAError(f"{out} is a file, not a folder; give another --out")
    _prepare_out(settings)
    train_index = index_split(settings.data, settings.train_split, skip_bad=settings.skip_bad)
    val_index = index_split(settings.data, settings.val_split, skip_bad=settings.skip_bad)
    train_samples = train_index.samples[: settings.train_limit]
    val_samples = val_index.samples[: settings.val_limit]

    torch.manual_seed(settings.seed)
    model, config, state = _starting_model(config, settings, sam_checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    run = _Run(model, config, settings, train_samples, val_samples, state)
    run_info = {"config": json.loads(config.to_json()), "settings": {k: str(v) if isinstance(v, Path) else v
                for k, v in dataclasses.asdict(settings).items()},
                "train_samples": len(train_samples), "val_samples": len(val_samples),
                "skipped": {**train_index.skipped, **val_index.skipped},
                "steps_per_epoch": run.steps_per_epoch, "total_steps": run.total_steps,
                "trainable_parameters": sum(p.numel() for p in run.params)}
    log.info("training %s: %d train / %d val samples, %d steps", config.preset, len(train_samples),
             len(val_samples), run.stop_at)
    run.run()
    progress = run.progress
    summary = {**run_info, "steps_done": progress["step"], "best_val_dice": progress["best_dice"],
               "best_step": progress["best_step"], "elapsed_s": round(progress["elapsed_s"], 1),
               "final": progress["history"][-1] if progress["history"] else None,
               "best_checkpoint": str(out / BEST_FILE)}
    _write_text(out / "train.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _starting_model(config: LGAConfig | None, settings: TrainSettings,
                    sam_checkpoint: Path | None) -> tuple[Any, LGAConfig, dict[str, Any] | None]:
    """(model, its config, the saved `last` state): the saved run's on --resume (refused when the
    options change its model), the checkpoint's with --init-from, else a fresh build."""
    from lga_export.build import build_lga
    from lga_export.checkpoint import load_sam_checkpoint
    from lga_export.training.state import load_last_model

    if settings.resume:
        model, state = load_last_model(Path(settings.out))
        if config is not None and config != model.config:
            changed = [k for k in dataclasses.asdict(config) if getattr(config, k) != getattr(model.config, k)]
            raise LGAError(f"--resume continues the saved {model.config.preset} model; the options change "
                           f"{changed} - drop them, or start over with --force")
        return model, model.config, state
    if settings.init_from is not None:
        model = _model_to_fine_tune(Path(settings.init_from), config, sam_checkpoint)
        return model, model.config, None
    model = build_lga(config)
    if sam_checkpoint:
        load_sam_checkpoint(model, sam_checkpoint)
    return model, config, None


def _recipe(settings: TrainSettings) -> dict[str, Any]:
    """The options a --resume must repeat, as saved with the run's progress."""
    recipe = {k: getattr(settings, k) for k in _RECIPE_FIELDS}
    recipe["data"] = str(Path(settings.data).resolve())
    recipe["init_from"] = str(Path(settings.init_from).resolve()) if settings.init_from else None
    return recipe


def _start_progress(out: Path, state: dict[str, Any] | None, optimizer: torch.optim.Optimizer,
                    recipe: dict[str, Any]) -> dict[str, Any]:
    """Fresh progress, or on --resume the saved run's (with its optimizer state restored), refused
    when the recipe changed since it was saved."""
    from lga_export.training.state import restore_state

    progress: dict[str, Any] = {"step": 0, "best_dice": -1.0, "best_step": -1, "history": [], "steps": [],
                                "elapsed_s": 0.0}
    if state is not None:
        saved = state["progress"].get("recipe", {})
        changed = {k: (saved[k], recipe[k]) for k in recipe if k in saved and saved[k] != recipe[k]}
        if changed:
            raise LGAError("--resume needs the options of the saved run; changed: " +
                           ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items()))
        progress = restore_state(out, state, optimizer)
    progress["recipe"] = recipe
    return progress


def _param_groups(model, trainable: list[torch.nn.Parameter], settings: TrainSettings) -> list[dict[str, Any]]:
    """The trainable parameters in AdamW groups: trained image-encoder weights at their own peak rate
    (`lr_scale` x the schedule) when `encoder_lr` is given, everything else at `lr`."""
    if settings.encoder_lr is None:
        return [{"params": trainable, "lr_scale": 1.0}]
    encoder = [p for p in model.image_encoder.parameters() if p.requires_grad]
    if not encoder or settings.lr <= 0:
        raise LGAError("--encoder-lr needs a trained image encoder (--train-encoder-stages N or --train-encoder) "
                       "and a positive --lr")
    in_encoder = {id(p) for p in encoder}
    rest = [p for p in trainable if id(p) not in in_encoder]
    groups = [{"params": rest, "lr_scale": 1.0}, {"params": encoder, "lr_scale": settings.encoder_lr / settings.lr}]
    return [group for group in groups if group["params"]]


class _Run:
    """What the step loop, validation and the `last` checkpoint of one run share: the model, its
    optimizer, text and prefix caches, the schedule's lengths and the progress saved in `last`."""

    def __init__(self, model, config: LGAConfig, settings: TrainSettings, train_samples: list, val_samples: list,
                 state: dict[str, Any] | None) -> None:
        from lga_export.data.dataset import SegmentationDataset
        from lga_export.training.prefix_cache import PrefixCache, supports_prefix_cache
        from lga_export.training.text_cache import TextEmbedder

        self.model, self.settings, self.val_samples = model, settings, val_samples
        self.out = out = Path(settings.out)
        model.train()
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise LGAError("the model has no trainable parameters")
        self.optimizer = torch.optim.AdamW(_param_groups(model, self.params, settings), lr=settings.lr,
                                           weight_decay=settings.weight_decay)
        self.progress = _start_progress(out, state, self.optimizer, _recipe(settings))
        self.embedder = TextEmbedder(model, [s.text for s in train_samples + val_samples])
        varied = settings.augment or settings.input_noise > 0  # --no-augment --input-noise G: noise only
        self.dataset = SegmentationDataset(train_samples, config, train=varied, seed=settings.seed,
                                           augment_config=AugmentConfig(paper=settings.augment,
                                                                        noise=settings.input_noise))
        self.train_prefixes = self.val_prefixes = None
        if settings.prefix_cache and not varied and supports_prefix_cache(model):
            self.train_prefixes = PrefixCache(model, train_samples, out / "prefix_cache", "train")
            self.val_prefixes = PrefixCache(model, val_samples, out / "prefix_cache", "val")
            log.info("caching the frozen encoder stages before the first FFM in %s", out / "prefix_cache")
        if settings.prefix_noise and self.train_prefixes is None:
            raise LGAError("--prefix-noise perturbs cached prefix tokens: it needs --no-augment, the prefix cache "
                           "and a model with a frozen encoder whose early stages can be cached (preset lite)")
        self.steps_per_epoch = max(1, len(self.dataset) // settings.batch_size)  # drop_last: equal batches
        self.total_steps = settings.epochs * self.steps_per_epoch
        self.stop_at = min(self.total_steps, settings.max_steps) if settings.max_steps else self.total_steps

    def checkpoint_last(self) -> None:
        from lga_export.training.state import save_last_state

        for cache in (self.train_prefixes, self.val_prefixes):
            if cache is not None:
                cache.flush()
        save_last_state(self.out, self.model, self.optimizer, self.progress)

    def validate(self, epoch: float, train_loss: float) -> None:
        """Score the validation split, record the row, and save best.safetensors on a better Dice."""
        from lga_export.checkpoint import save_lga_checkpoint
        from lga_export.training.evaluate import score_samples, summarize
        from lga_export.training.schedule import lr_at

        settings, progress = self.settings, self.progress
        scores = score_samples(self.model, self.embedder, self.val_samples, settings.eval_batch_size,
                               prefixes=self.val_prefixes, bf16=settings.bf16)
        summary = summarize(scores)
        row = {"epoch": round(epoch, 3), "step": progress["step"], "train_loss": round(train_loss, 6),
               "val_dice": round(summary["dice"], 6), "val_miou": round(summary["miou"], 6),
               "lr": lr_at(max(0, progress["step"] - 1), settings.lr, settings.warmup_steps, self.total_steps),
               "elapsed_s": round(progress["elapsed_s"], 1)}
        progress["history"].append(row)
        if summary["dice"] > progress["best_dice"]:
            progress["best_dice"], progress["best_step"] = summary["dice"], progress["step"]
            save_lga_checkpoint(self.model, self.out / BEST_FILE, force=True,
                                metadata={"step": str(progress["step"]), "epoch": str(row["epoch"]),
                                          "val_dice": f"{summary['dice']:.6f}", "val_miou": f"{summary['miou']:.6f}",
                                          "data": str(settings.data)})
        _write_metrics(self.out, progress["history"], progress["steps"])
        log.info("epoch %.2f step %d: loss %.4f val Dice %.4f mIoU %.4f", epoch, progress["step"], train_loss,
                 summary["dice"], summary["miou"])

    def run(self) -> None:
        """Train up to `stop_at`; Ctrl-C saves `last` and ends in Interrupted."""
        from tqdm import tqdm

        started = time.monotonic() - self.progress["elapsed_s"]
        bar = tqdm(total=self.stop_at, initial=self.progress["step"], desc="train",
                   disable=not self.settings.progress, dynamic_ncols=True)
        try:
            while self.progress["step"] < self.stop_at:
                self._epoch(started, bar)
        except KeyboardInterrupt:
            self.checkpoint_last()
            bar.close()
            raise Interrupted(f"stopped at step {self.progress['step']}; the state is saved in {self.out / 'last'}: "
                              f"rerun with --resume") from None
        bar.close()

    def _loader(self) -> DataLoader:
        """The current epoch's batches in its seeded order, from the current step (resume mid-epoch)."""
        from lga_export.data.dataset import collate

        settings = self.settings
        epoch = self.progress["step"] // self.steps_per_epoch
        skip = self.progress["step"] - epoch * self.steps_per_epoch
        self.dataset.set_epoch(epoch)
        order = torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(settings.seed * 7919 + epoch))
        order = order[: self.steps_per_epoch * settings.batch_size][skip * settings.batch_size:].tolist()
        return DataLoader(Subset(self.dataset, order), batch_size=settings.batch_size, shuffle=False,
                          collate_fn=collate, drop_last=True)

    def _epoch(self, started: float, bar) -> None:
        """The rest of the current epoch, step by step, until its end or `stop_at`."""
        from lga_export.training.schedule import lr_at

        settings, progress = self.settings, self.progress
        losses: list[float] = []
        for batch in self._loader():
            step = progress["step"]
            lr = lr_at(step, settings.lr, settings.warmup_steps, self.total_steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)  # runs saved before encoder_lr have no scale
            noise = torch.Generator().manual_seed(settings.seed * 1_000_003 + step) \
                if settings.prefix_noise else None  # seeded by step: the same draws on --resume
            loss = train_step(self.model, self.optimizer, self.embedder, batch, self.params, settings.grad_clip,
                              self.train_prefixes, settings.bf16, settings.prefix_noise, noise)
            if not math.isfinite(loss.item()):
                raise LGAError(f"the loss became {loss.item()} at step {step}; lower --lr")
            progress["step"] = step + 1
            progress["elapsed_s"] = time.monotonic() - started
            losses.append(loss.item())
            if progress["step"] % settings.log_every == 0 or progress["step"] == 1:
                recent = losses[-settings.log_every:]
                progress["steps"].append({"step": progress["step"], "loss": sum(recent) / len(recent), "lr": lr})
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}")
            if self._after_step(losses):
                break

    def _after_step(self, losses: list[float]) -> bool:
        """Validate and save `last` at an epoch's end, at `stop_at` and every --val-every steps, else
        save every --save-every steps; True when the run is done."""
        step, settings = self.progress["step"], self.settings
        if step % self.steps_per_epoch == 0 or step >= self.stop_at or (
                settings.val_every and step % settings.val_every == 0):
            self.validate(step / self.steps_per_epoch, sum(losses) / len(losses))
            self.checkpoint_last()
            return step >= self.stop_at
        if step % settings.save_every == 0:
            self.checkpoint_last()
        return False
