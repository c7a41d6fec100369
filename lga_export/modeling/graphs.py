"""Graph wrappers: each exposes one exported graph's forward with the contract's argument order.

They hold the tracing concessions so the model itself stays clean. The exporter traces them
and the PyTorch runner runs them, so they live with the model, below both.
"""

from __future__ import annotations

import torch
from torch import nn

from lga_export.contract import IMAGE_GRAPH, TEXT_GRAPH


class TextGraph(nn.Module):
    """input_ids, attention_mask -> text_embedding (pooling and projection inside the graph)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(input_ids, attention_mask)


class ImageGraph(nn.Module):
    """image, text_embedding -> mask_logits: image encoder with its FFMs and the mask decoder."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, text_embedding: torch.Tensor) -> torch.Tensor:
        return self.model.forward_image(image, text_embedding)


def graph_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Spec name -> wrapper module."""
    return {TEXT_GRAPH: TextGraph(model).eval(), IMAGE_GRAPH: ImageGraph(model).eval()}
