"""LGA on SAM's ViT image encoder (presets vit_b, vit_l, vit_h and tiny): the paper's model."""

from __future__ import annotations

from torch import nn

from lga_export.config import LGAConfig


def build(config: LGAConfig, text_backbone: nn.Module | None) -> nn.Module:
    from lga_export.modeling.lga import LGA

    return LGA(config, text_backbone)


def architecture(config: LGAConfig) -> str:
    """One line for `info`: encoder shape and where the FFMs sit."""
    return (f"SAM ViT width {config.embed_dim}, depth {config.depth}, {config.num_ffms} FFMs (full at blocks "
            f"{list(config.ffm_block_indexes)}, image-only after the last block)")


def load_default_weights(model: nn.Module) -> None:
    """SAM's weights are the user's file (--sam-checkpoint); nothing is loaded by default."""


def unfreeze_encoder_stages(model: nn.Module) -> None:
    """Nothing: a SAM-ViT encoder trains whole or not at all (its config refuses train_encoder_stages)."""


def extra_parts(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Parts beyond text, image encoder, FFMs and decoder: none for SAM-ViT."""
    return []


def provided_prefixes(model: nn.Module) -> tuple[str, ...]:
    """State-dict prefixes a checkpoint need not store: none (SAM weights are trained or the user's)."""
    return ()
