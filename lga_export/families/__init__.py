"""Model families: what differs between LGA on SAM's ViT and LGA on LiteMedSAM's TinyViT, in one
module each (`sam_vit`, `tiny_vit`): the builder, pretrained weights and their key mapping, the
named parts that `info` counts, and the weights a checkpoint need not store because a verified
package provides them; and, torch-free in `<name>_spec` (a `spec.FamilySpec`), the config checks
and arithmetic and what reduced-precision graphs keep in FP32. Everything else (config, export,
quantisers, runtimes, training, serving) reads the model's config and these, never the family's
name. This package imports neither torch nor the config at import time: the config imports it."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lga_export.config import LGAConfig
    from lga_export.families.spec import FamilySpec

FAMILIES = ("sam_vit", "tiny_vit")
"""Model families: SAM's ViT encoder (vit_b/l/h, tiny) and LiteMedSAM's TinyViT encoder (lite)."""


def _module(family: str, suffix: str = "") -> ModuleType:
    if family not in FAMILIES:  # LGAConfig checks this too; a guard for hand-made configs
        raise ValueError(f"unknown model family {family!r}")
    return importlib.import_module(f"lga_export.families.{family}{suffix}")


def spec_of(family: str) -> FamilySpec:
    """The torch-free declarations of `family` (a config's `family` field)."""
    return _module(family, "_spec").SPEC


def family_of(config: LGAConfig) -> ModuleType:
    """The family module of a config (`lga_export.families.<config.family>`; imports torch)."""
    return _module(config.family)
