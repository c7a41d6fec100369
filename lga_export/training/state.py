"""The `last` state of a run, for resume: model weights (safetensors) + optimizer, step, RNG
and history (a plain dict of tensors, numbers and strings, read back with weights_only=True).

Both files live in one folder that is replaced atomically, so they always belong together.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lga_export.errors import LGAError
from lga_export.fileio import atomic_dir

LAST_DIR = "last"
MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"


def save_last_state(out: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    progress: dict[str, Any]) -> Path:
    """Write <out>/last/ atomically (replacing the previous one)."""
    from lga_export.checkpoint import save_lga_checkpoint

    target = Path(out) / LAST_DIR
    with atomic_dir(target, force=True) as tmp:
        save_lga_checkpoint(model, tmp / MODEL_FILE, metadata={"step": str(progress["step"])})
        state = {"optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
                 "progress": progress}
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
    return model_path, state
