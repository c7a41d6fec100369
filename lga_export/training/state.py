"""The `last` state of a run, for resume: model weights (safetensors) + optimizer, step, RNG
and history (a plain dict of tensors, numbers and strings, read back with weights_only=True).

Both files live in one folder that is replaced atomically, so they always belong together; the
state also records the model's digest, so a resume that finds other weights beside it (a copied
or edited `last/`) refuses instead of training on with mismatched optimizer moments.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lga_export.errors import LGAError, one_line
from lga_export.fileio import atomic_dir

LAST_DIR = "last"
MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
# What a run's progress record must hold (save_last_state writes it, the loop reads every key).
_PROGRESS = {"step": int, "best_dice": (int, float), "best_step": int, "history": list, "steps": list,
             "elapsed_s": (int, float)}


def save_last_state(out: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    progress: dict[str, Any]) -> Path:
    """Write <out>/last/ atomically (replacing the previous one)."""
    from lga_export.checkpoint import model_digest, save_lga_checkpoint

    target = Path(out) / LAST_DIR
    with atomic_dir(target, force=True) as tmp:
        save_lga_checkpoint(model, tmp / MODEL_FILE, metadata={"step": str(progress["step"])})
        state = {"optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
                 "progress": progress, "model_digest": model_digest(model)}
        torch.save(state, tmp / STATE_FILE)
    return target


def load_last_state(out: Path) -> tuple[Path, dict[str, Any]]:
    """(model checkpoint path, state dict) of <out>/last/; LGAError when absent or unreadable."""
    folder = Path(out) / LAST_DIR
    model_path, state_path = folder / MODEL_FILE, folder / STATE_FILE
    if not model_path.is_file() or not state_path.is_file():
        raise LGAError(f"{folder}: no saved training state to resume from; run without --resume")
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        raise LGAError(f"{state_path}: unreadable training state ({exc.__class__.__name__}); "
                       f"start again with --force") from exc
    if not isinstance(state, dict) or not {"optimizer", "torch_rng", "progress"} <= state.keys():
        raise LGAError(f"{state_path}: not an lga-export training state")
    progress = state["progress"]
    wrong = [key for key, kind in _PROGRESS.items() if not isinstance(progress, dict)
             or not isinstance(progress.get(key), kind) or isinstance(progress.get(key), bool)]
    if wrong:
        raise LGAError(f"{state_path}: the training state lacks {', '.join(wrong)} (or holds another type); it was "
                       f"not written by lga-export train - start again with --force")
    return model_path, state


def restore_state(out: Path, state: dict[str, Any], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Load the saved optimizer and RNG; returns the progress. A state that does not fit this model's
    optimizer (other parameter groups or shapes, a parameter's state without its step) is refused
    naming the file, before it could fail or, worse, train on mismatched moments."""
    state_path = Path(out) / LAST_DIR / STATE_FILE
    problem = _optimizer_problem(state["optimizer"], optimizer)
    if problem:
        raise LGAError(f"{state_path}: {problem}; this state belongs to another model or run - start again with "
                       f"--force")
    try:
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
    except (ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise LGAError(f"{state_path}: the saved optimizer or RNG state does not load ({exc.__class__.__name__}: "
                       f"{one_line(str(exc), 200)}); start again with --force") from None
    return state["progress"]


def _optimizer_problem(saved: Any, optimizer: torch.optim.Optimizer) -> str | None:
    """What makes the saved AdamW state unusable for `optimizer`, or None."""
    groups = saved.get("param_groups") if isinstance(saved, dict) else None
    if not isinstance(groups, list) or not isinstance(saved.get("state"), dict) or \
            not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups):
        return "no optimizer parameter groups in it"
    ours = [len(g["params"]) for g in optimizer.param_groups]
    theirs = [len(g["params"]) for g in groups]
    if ours != theirs:
        return f"its optimizer has parameter groups of {theirs} tensors, this model's has {ours}"
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for param, key in zip(params, [k for g in groups for k in g["params"]]):
        entry = saved["state"].get(key)
        if entry is None:
            continue  # no step taken on that parameter yet
        if not isinstance(entry, dict) or "step" not in entry:
            return f"the optimizer state of parameter {key} lacks its step"
        for moment in ("exp_avg", "exp_avg_sq"):
            value = entry.get(moment)
            if not isinstance(value, torch.Tensor) or value.shape != param.shape:
                return (f"the optimizer's {moment} of parameter {key} has shape "
                        f"{tuple(value.shape) if isinstance(value, torch.Tensor) else None}, the model's "
                        f"{tuple(param.shape)}")
    return None


def load_last_model(out: Path) -> tuple[nn.Module, dict[str, Any]]:
    """(model, state) of <out>/last/, the model checked against the digest its state recorded (a
    state saved before digests were recorded is taken as it is)."""
    from lga_export.checkpoint import load_lga_checkpoint, model_digest

    model_path, state = load_last_state(out)
    model = load_lga_checkpoint(model_path)
    recorded = state.get("model_digest")
    if recorded is not None and model_digest(model) != recorded:
        raise LGAError(f"{model_path} is not the model {model_path.parent / STATE_FILE} was saved with (its digest "
                       f"differs); restore the pair from one save or start again with --force")
    return model, state
