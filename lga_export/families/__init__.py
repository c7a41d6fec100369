"""Model families: what differs between LGA on SAM's ViT and LGA on LiteMedSAM's TinyViT, in one
module each (`sam_vit`, `tiny_vit`): the builder, pretrained weights and their key mapping, the
named parts that `info` counts, and the weights a checkpoint need not store because a verified
package provides them. Their torch-free declarations (config checks and arithmetic, what
reduced-precision graphs keep in FP32) are in `lga_export.family_specs`. Everything else (config,
export, quantisers, runtimes, training, serving) reads the model's config and these, never the
family's name."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

from lga_export.family_specs import FAMILIES

if TYPE_CHECKING:
    from lga_export.family_specs.spec import ArchitectureFields


def _module(family: str) -> ModuleType:
    if family not in FAMILIES:  # LGAConfig checks this too; a guard for hand-made configs
        raise ValueError(f"unknown model family {family!r}")
    return importlib.import_module(f"lga_export.families.{family}")


def family_of(config: ArchitectureFields) -> ModuleType:
    """The family module of a config (`lga_export.families.<config.family>`; imports torch)."""
    return _module(config.family)
