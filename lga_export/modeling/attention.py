"""The cross-attention of the Feature Fusion Modules, written once for training and deployment.

Authors' layout: one head, internal width C/8, separate q/k/v/out Linear layers. Two
deployment concessions that do not change the result:
- the query is scaled before the QK product, so FP16 scores stay small;
- the softmax runs in FP32 whatever the surrounding precision.
The image-reads-text half attends over a single text token; a softmax over one key is
identically 1, so that path skips the QK product and the softmax altogether.
"""

from __future__ import annotations

import torch
from torch import nn


class FusionCrossAttention(nn.Module):
    """Single-head cross-attention: queries [B, Nq, C] read a context [B, Nk, C]."""

    def __init__(self, dim: int, inner_dim: int) -> None:
        super().__init__()
        self.q_proj = nn.Linear(dim, inner_dim)
        self.k_proj = nn.Linear(dim, inner_dim)
        self.v_proj = nn.Linear(dim, inner_dim)
        self.out_proj = nn.Linear(inner_dim, dim)
        self.scale = inner_dim**-0.5

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """BxNqxC, BxNkxC -> BxNqxC."""
        q = self.q_proj(query) * self.scale
        k = self.k_proj(context)
        v = self.v_proj(context)
        scores = q @ k.transpose(-2, -1)
        weights = torch.softmax(scores.float(), dim=-1).to(v.dtype)
        return self.out_proj(weights @ v)

    def forward_single_key(self, context: torch.Tensor) -> torch.Tensor:
        """Attention over one key (context Bx1xC): every query receives out(v(context)).

        Returns Bx1xC, which broadcasts over the queries. q_proj and k_proj take no part:
        their gradient is exactly zero in the softmax formulation too.
        """
        return self.out_proj(self.v_proj(context))
