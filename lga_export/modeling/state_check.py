"""Whether a state dict fits a model: the one error every weight loader raises for a mismatch.

Below the checkpoint readers and the model families, which both load weights with it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lga_export.errors import LGAError


def check_state(path: Path, found: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str,
                 hint: str = "", unexpected: list[str] | None = None) -> None:
    """One error naming the file and the first missing/unexpected keys or the first shape mismatch."""
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(set(unexpected or ()) | (found.keys() - expected.keys()))
    if missing or unexpected:
        raise LGAError(f"{path}: does not match {what}: {len(missing)} missing keys {missing[:3]}, "
                       f"{len(unexpected)} unexpected keys {unexpected[:3]}{hint}")
    for key, tensor in found.items():
        if tensor.shape != expected[key].shape:
            raise LGAError(f"{path}: {key} has shape {tuple(tensor.shape)}, {what} needs "
                           f"{tuple(expected[key].shape)}{hint}")

