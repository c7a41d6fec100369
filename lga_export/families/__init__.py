"""Model families: what differs between LGA on SAM's ViT and LGA on LiteMedSAM's TinyViT, in one
module each (`sam_vit`, `tiny_vit`): the builder, pretrained weights and their key mapping, the
named parts that `info` counts, and the weights a checkpoint need not store because a verified
package provides them. Everything else (export, runtimes, training, serving) reads the model's
config and this interface, never the family's name."""

from __future__ import annotations

import importlib
from types import ModuleType

from lga_export.config import FAMILIES, LGAConfig


def family_of(config: LGAConfig) -> ModuleType:
    """The family module of a config (`lga_export.families.<config.family>`)."""
    if config.family not in FAMILIES:  # LGAConfig checks this too; a guard for hand-made configs
        raise ValueError(f"unknown model family {config.family!r}")
    return importlib.import_module(f"lga_export.families.{config.family}")
