"""LGA: SAM's image encoder driven block by block with Feature Fusion Modules, then SAM's
mask decoder without prompts.

SAM's modules are imported from `segment-anything` and composed, not copied.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, TwoWayTransformer
from segment_anything.modeling.prompt_encoder import PositionEmbeddingRandom
from torch import nn

from lga_export.config import LGAConfig
from lga_export.modeling.ffm import FeatureFusionModule
from lga_export.modeling.text_encoder import LearnableQuery, TextEncoder


class LGA(nn.Module):
    """image Bx3xHxW (SAM-normalised), input_ids / attention_mask BxS -> mask logits Bx1x256x256."""

    def __init__(self, config: LGAConfig, text_backbone: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        c = config
        self.image_encoder = ImageEncoderViT(
            img_size=c.image_size, patch_size=c.patch_size, embed_dim=c.embed_dim, depth=c.depth,
            num_heads=c.num_heads, mlp_ratio=c.mlp_ratio, out_chans=c.prompt_embed_dim,
            qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6), use_rel_pos=True,
            window_size=c.window_size, global_attn_indexes=tuple(c.global_attn_indexes),
        )
        self.text_encoder = text_branch(c, text_backbone)
        self.ffm_blocks = tuple(c.ffm_block_indexes)
        ffm = partial(FeatureFusionModule, c.embed_dim, attn_ratio=c.attn_ratio,
                      mlp_reduction=c.mlp_reduction, text_mlp=c.text_mlp, vit_mlp=c.vit_mlp)
        self.ffms = nn.ModuleList([ffm() for _ in self.ffm_blocks] + [ffm(text_half=False)])
        self.dense_pe = PositionEmbeddingRandom(c.prompt_embed_dim // 2)
        self.mask_decoder = sam_mask_decoder(c)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """BxS token ids and mask -> text embedding Bx1xC (paper's L0, projected to the ViT width)."""
        return self.text_encoder(input_ids, attention_mask)

    def encode_image(self, image: torch.Tensor, text_embedding: torch.Tensor) -> torch.Tensor:
        """Bx3xHxW, Bx1xC -> image embedding BxDxgxg, with text fused in by the FFMs."""
        encoder = self.image_encoder
        x = encoder.patch_embed(image)  # B x g x g x C
        if encoder.pos_embed is not None:
            x = x + encoder.pos_embed
        text = text_embedding
        inner = dict(zip(self.ffm_blocks, self.ffms))
        for index, block in enumerate(encoder.blocks):
            if index in inner:
                text, x = self._fuse(inner[index], text, x)
            x = block(x)
        _, x = self._fuse(self.ffms[-1], text, x)
        return encoder.neck(x.permute(0, 3, 1, 2))

    @staticmethod
    def _fuse(ffm: nn.Module, text: torch.Tensor, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, h, w, c = grid.shape
        text, tokens = ffm(text, grid.reshape(b, h * w, c))
        return text, tokens.reshape(b, h, w, c)

    def decode(self, image_embedding: torch.Tensor) -> torch.Tensor:
        """BxDxgxg -> mask logits Bx1xSxS (S = config.mask_size), SAM's decoder with no prompts."""
        return decode_without_prompts(self.mask_decoder, self.dense_pe, image_embedding, self.config.mask_size)

    def forward_image(self, image: torch.Tensor, text_embedding: torch.Tensor) -> torch.Tensor:
        """The fused image graph: image + text embedding -> mask logits."""
        return self.decode(self.encode_image(image, text_embedding))

    def forward(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.forward_image(image, self.encode_text(input_ids, attention_mask))


def text_branch(config: LGAConfig, text_backbone: nn.Module | None) -> nn.Module:
    """The text side at the first FFM's width: a learned query (paper Table 2) or the report through
    the text backbone, mean-pooled and projected."""
    if config.text_source == "learnable_query":
        return LearnableQuery(config.text_dim)
    if text_backbone is None:
        raise ValueError("text_source='report' needs a text backbone")
    return TextEncoder(text_backbone, config.text_dim)


def sam_mask_decoder(config: LGAConfig) -> MaskDecoder:
    """SAM's mask decoder (segment-anything's module) with the config's widths."""
    return MaskDecoder(
        transformer_dim=config.prompt_embed_dim,
        transformer=TwoWayTransformer(depth=config.decoder_depth, embedding_dim=config.prompt_embed_dim,
                                      mlp_dim=config.decoder_mlp_dim, num_heads=config.decoder_heads),
        num_multimask_outputs=config.num_multimask_outputs, iou_head_depth=3,
        iou_head_hidden_dim=config.iou_head_hidden_dim)


def decode_without_prompts(decoder: MaskDecoder, dense_pe: PositionEmbeddingRandom, image_embedding: torch.Tensor,
                           mask_size: int, dense_embedding: torch.Tensor | None = None) -> torch.Tensor:
    """SAM's mask decoder run with only its output tokens (no sparse prompts): BxDxgxg -> Bx1xSxS
    logits of the first mask token. `dense_embedding` (1xD, SAM's no-mask embedding) is added to the
    image embedding as SAM's decoder does when no mask prompt is given; LGA on SAM-ViT leaves it out."""
    b, _, h, w = image_embedding.shape
    image_pe = dense_pe((h, w)).unsqueeze(0)  # as PromptEncoder.get_dense_pe()
    if dense_embedding is not None:
        image_embedding = image_embedding + dense_embedding.reshape(1, -1, 1, 1)
    tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = tokens.unsqueeze(0).expand(b, -1, -1)
    hs, src = decoder.transformer(image_embedding, image_pe, tokens)
    src = src.transpose(1, 2).reshape(b, -1, h, w)
    upscaled = decoder.output_upscaling(src)
    hyper = decoder.output_hypernetworks_mlps[0](hs[:, 1, :]).unsqueeze(1)  # first mask token
    uc, uh, uw = upscaled.shape[1:]
    logits = (hyper @ upscaled.reshape(b, uc, uh * uw)).reshape(b, 1, uh, uw)
    if (uh, uw) != (mask_size, mask_size):
        logits = F.interpolate(logits, size=(mask_size, mask_size), mode="bilinear", align_corners=False)
    return logits
