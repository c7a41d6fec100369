"""What each model family declares without PyTorch (a `spec.FamilySpec` per family): the config
checks and arithmetic that differ between families, and what its reduced-precision graphs keep in
FP32. A foundation: the config, the exporter, both quantisers and the lean runtime read it, and it
imports nothing of the package but `errors`. The torch builders are in `lga_export.families`."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lga_export.family_specs.spec import FamilySpec

FAMILIES = ("sam_vit", "tiny_vit")
"""Model families: SAM's ViT encoder (vit_b/l/h, tiny) and LiteMedSAM's TinyViT encoder (lite)."""


def spec_of(family: str) -> FamilySpec:
    """The torch-free declarations of `family` (a config's `family` field)."""
    if family not in FAMILIES:  # LGAConfig checks this too; a guard for hand-made configs
        raise ValueError(f"unknown model family {family!r}")
    return importlib.import_module(f"lga_export.family_specs.{family}").SPEC
