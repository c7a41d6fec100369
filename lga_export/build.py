"""Build an LGA model from a config: load the text backbone, then freeze as the paper does."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from lga_export.config import LGAConfig
from lga_export.families import family_of
from lga_export.modeling.lga import LGA
from lga_export.modeling.text_encoder import load_text_backbone


def build_lga(config: LGAConfig, text_backbone: nn.Module | None = None, *, pretrained: bool = True) -> LGA:
    """A ready LGA (eval mode) of the config's family with the config's freezing applied and, with
    `pretrained`, the family's default weights loaded (LiteMedSAM for `lite`; none for SAM-ViT)."""
    if config.text_source == "report" and text_backbone is None:
        text_backbone = load_text_backbone(config.text_model)
    family = family_of(config)
    model = family.build(config, text_backbone)
    apply_freezing(model)
    model.eval()
    if pretrained:
        family.load_default_weights(model)
    return model


def apply_freezing(model: LGA) -> None:
    """Paper: ViT and text encoder frozen; FFMs, text projection and mask decoder trained (a staged
    encoder may train its last stages: config.train_encoder_stages)."""
    config = model.config
    model.requires_grad_(True)
    model.image_encoder.requires_grad_(config.train_image_encoder)
    family_of(config).unfreeze_encoder_stages(model)
    backbone = getattr(model.text_encoder, "backbone", None)
    if backbone is not None:
        backbone.requires_grad_(config.train_text_encoder)


def frozen_text_backbone(model: LGA) -> bool:
    """True when the text backbone is pretrained and frozen, so checkpoints reference it by name."""
    return hasattr(model.text_encoder, "backbone") and not model.config.train_text_encoder


@dataclass(frozen=True)
class PartCount:
    name: str
    trainable: int
    frozen: int

    @property
    def total(self) -> int:
        return self.trainable + self.frozen


def model_parts(model: LGA) -> list[tuple[str, nn.Module]]:
    """The named parts whose parameters `info` reports, in forward order."""
    parts: list[tuple[str, nn.Module]] = []
    backbone = getattr(model.text_encoder, "backbone", None)
    if backbone is not None:
        parts.append(("text_backbone", backbone))
        parts.append(("text_projection", model.text_encoder.projection))
    else:
        parts.append(("learnable_query", model.text_encoder))
    parts.append(("image_encoder", model.image_encoder))
    for index, ffm in enumerate(model.ffms, start=1):
        parts.append((f"ffm_{index}", ffm))
    parts.extend(family_of(model.config).extra_parts(model))
    parts.append(("mask_decoder", model.mask_decoder))
    return parts


def count_parameters(model: LGA) -> list[PartCount]:
    counts = []
    for name, part in model_parts(model):
        trainable = sum(p.numel() for p in part.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in part.parameters() if not p.requires_grad)
        counts.append(PartCount(name, trainable, frozen))
    return counts


def dead_parameter_names(model: LGA) -> set[str]:
    """Trainable parameters that by construction never get a gradient.

    They are kept so that checkpoints keep SAM's and the authors' layout (and the paper's
    parameter counts): the query LayerNorm and q/k projections of the one-key
    image-reads-text attention (a softmax over one key is 1 whatever the query), and the
    decoder's IoU head and the hypernetwork MLPs of masks 1.. (only mask 0 is used).
    """
    dead = set()
    for name, _ in model.named_parameters():
        if any(f".image_update.{part}." in name for part in ("norm_image", "attn.q_proj", "attn.k_proj")):
            dead.add(name)
        elif name.startswith("mask_decoder.iou_prediction_head."):
            dead.add(name)
        elif name.startswith("mask_decoder.output_hypernetworks_mlps.") and not name.startswith(
                "mask_decoder.output_hypernetworks_mlps.0."):
            dead.add(name)
    return dead
