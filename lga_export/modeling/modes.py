"""A module in eval mode for a block, its own mode restored after: frozen parts and exports run
as at inference (no dropout, BatchNorm's stored statistics) in the middle of a training run."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)
