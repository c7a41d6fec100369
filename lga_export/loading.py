"""Turn what the user named (a preset, an LGA checkpoint, a SAM checkpoint) into a model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lga_export.config import LGAConfig, get_preset
from lga_export.errors import LGAError

DEFAULT_PRESET = "lite"
EMBEDDED_MODELS = {"lite": "lga_lite_qata.safetensors", "tiny": "lga_tiny_qata.safetensors"}
"""Trained models shipped with the package, in order of preference for the default: `lite` (LGA on
LiteMedSAM, QaTa-COV19) and `tiny` (trained from scratch; small and fast, used by most tests)."""


def embedded_checkpoint(preset: str) -> Path | None:
    """The shipped checkpoint of `preset`, when this install has it."""
    name = EMBEDDED_MODELS.get(preset)
    path = Path(__file__).resolve().parent / "assets" / "default_model" / name if name else None
    return path if path is not None and path.is_file() else None


def default_checkpoint() -> Path | None:
    """The embedded default model: the first shipped checkpoint of EMBEDDED_MODELS."""
    return next((path for path in map(embedded_checkpoint, EMBEDDED_MODELS) if path is not None), None)


def resolve_config(preset: str | None, checkpoint: str | Path | None,
                   overrides: dict[str, Any] | None = None) -> LGAConfig:
    """The config for a preset (with ablation overrides) or the one stored in a checkpoint."""
    from lga_export.checkpoint import load_lga_config

    if preset and checkpoint:
        raise LGAError("give either --preset or --checkpoint, not both")
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if checkpoint:
        config = load_lga_config(checkpoint)
        architecture = set(overrides) - {"text_model"}
        if architecture:
            raise LGAError(f"{checkpoint}: the architecture is fixed by the checkpoint; drop {sorted(architecture)}")
    else:
        config = get_preset(preset or DEFAULT_PRESET)
    return config.replace(**overrides) if overrides else config


def load_model(preset: str | None = None, checkpoint: str | Path | None = None,
               sam_checkpoint: str | Path | None = None, overrides: dict[str, Any] | None = None):
    """Build the model, then load an LGA checkpoint or SAM's weights into it."""
    from lga_export.build import build_lga
    from lga_export.checkpoint import load_lga_checkpoint, load_sam_checkpoint

    if checkpoint is None and preset is None and sam_checkpoint is None:
        checkpoint = default_checkpoint()
    config = resolve_config(preset, checkpoint, overrides)
    if checkpoint:
        if sam_checkpoint:
            raise LGAError("an LGA checkpoint already holds the SAM weights; drop --sam-checkpoint")
        return load_lga_checkpoint(checkpoint, config=config)
    model = build_lga(config)
    if sam_checkpoint:
        load_sam_checkpoint(model, sam_checkpoint)
    return model
