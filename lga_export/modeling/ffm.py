"""Feature Fusion Module (paper Eqs. 2-5): text and image tokens read each other.

    L' = L  + CrossAttn_t(norm(L), norm(V))         (2)  text reads the image
    L^ = L' + MLP_text(norm(L'))                     (3)
    V' = V  + gamma * CrossAttn_v(norm(V), norm(L^)) (4)  image reads the text
    V^ = V' + MLP_vit(norm(V'))                      (5)

The last FFM of LGA has only the image half (Eqs. 4-5). Without an MLP its LayerNorm goes
too, which is what makes the paper's Table 3 counts come out.
"""

from __future__ import annotations

import torch
from torch import nn

from lga_export.modeling.attention import FusionCrossAttention


def _bottleneck_mlp(dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))


class TextReadsImage(nn.Module):
    """Eqs. 2-3: the text token is updated from the image tokens."""

    def __init__(self, dim: int, attn_dim: int, mlp_hidden: int, use_mlp: bool) -> None:
        super().__init__()
        self.norm_text = nn.LayerNorm(dim)
        self.norm_image = nn.LayerNorm(dim)
        self.attn = FusionCrossAttention(dim, attn_dim)
        self.norm_mlp = nn.LayerNorm(dim) if use_mlp else None
        self.mlp = _bottleneck_mlp(dim, mlp_hidden) if use_mlp else None

    def forward(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Bx1xC, BxNxC -> Bx1xC."""
        text = text + self.attn(self.norm_text(text), self.norm_image(image))
        if self.mlp is not None:
            text = text + self.mlp(self.norm_mlp(text))
        return text


class ImageReadsText(nn.Module):
    """Eqs. 4-5: image tokens are updated from the text token, gated by gamma (init 0)."""

    def __init__(self, dim: int, attn_dim: int, mlp_hidden: int, use_mlp: bool) -> None:
        super().__init__()
        self.norm_image = nn.LayerNorm(dim)
        self.norm_text = nn.LayerNorm(dim)
        self.attn = FusionCrossAttention(dim, attn_dim)
        self.gamma = nn.Parameter(torch.zeros(dim))
        self.norm_mlp = nn.LayerNorm(dim) if use_mlp else None
        self.mlp = _bottleneck_mlp(dim, mlp_hidden) if use_mlp else None

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """BxNxC, Bx1xC -> BxNxC. The queries (norm(V)) do not change a one-key attention."""
        image = image + self.gamma * self.attn.forward_single_key(self.norm_text(text))
        if self.mlp is not None:
            image = image + self.mlp(self.norm_mlp(image))
        return image


class FeatureFusionModule(nn.Module):
    """One FFM: (text Bx1xC, image tokens BxNxC) -> (text, image tokens)."""

    def __init__(self, dim: int, *, attn_ratio: int = 8, mlp_reduction: int = 4,
                 text_half: bool = True, text_mlp: bool = True, vit_mlp: bool = True) -> None:
        super().__init__()
        attn_dim, mlp_hidden = dim // attn_ratio, dim // mlp_reduction
        self.text_update = TextReadsImage(dim, attn_dim, mlp_hidden, text_mlp) if text_half else None
        self.image_update = ImageReadsText(dim, attn_dim, mlp_hidden, vit_mlp)
        self.apply(_init_weights)

    def forward(self, text: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.text_update is not None:
            text = self.text_update(text, image)
        return text, self.image_update(image, text)


def _init_weights(module: nn.Module) -> None:
    """Authors' init: Linear weights truncated normal (std 0.02), biases 0; gamma stays 0."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
