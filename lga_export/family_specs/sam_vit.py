"""SAM-ViT's torch-free declarations (presets vit_b, vit_l, vit_h, tiny): config checks, grid and
FFM widths, and what its reduced-precision graphs keep in FP32."""

from __future__ import annotations

from lga_export.errors import LGAError
from lga_export.family_specs.spec import FFM_SCOPE, SHARED_FP16_FP32_OPS, ArchitectureFields, FamilySpec

# Module paths whose nodes stay FP32 in the static INT8 graph, and why. Found by ablation on the
# trained default model (each module group quantised alone, then everything but it; worst mask
# agreement over 100 QaTa Val images against FP32). All three carry little of the FLOPs.
INT8_FP32_SCOPES: dict[str, str] = {
    r"^model\.image_encoder\.patch_embed": "patch embedding; quantised alone: worst agreement 0.990",
    r"^model\.image_encoder\.neck": "neck convolutions before the decoder; alone: 0.992",
    r"^model\.mask_decoder\.": "mask decoder (two-way transformer, hypernetwork MLPs, logits product); each "
                                 "transformer layer alone: 0.992",
}
# Together (64 calibration images): everything else INT8 0.973 worst / 0.9929 mean; the patch
# embedding and neck kept FP32 0.980 / 0.9948; the decoder too 0.989 / 0.9970.

# NNCF keeps the FFMs FP32 as well: in the trained default model, keeping the image half of the
# FFMs (the image tokens reading the single text token, scaled by gamma) in FP32 raised the worst
# agreement over 100 QaTa Val images from 0.668 to 0.938. They carry a small share of the FLOPs.
OV_INT8_FP32_SCOPES: dict[str, str] = {FFM_SCOPE: "fusion modules; kept FP32: worst agreement 0.668 -> 0.938",
                                       **INT8_FP32_SCOPES}


def check(config: ArchitectureFields) -> None:
    """Patch grid, FFM count (one at the input of each block, one after the last) and widths."""
    if config.image_size % config.patch_size:
        raise LGAError(f"image_size {config.image_size} is not a multiple of patch_size {config.patch_size}")
    if config.num_ffms < 1 or config.num_ffms > config.depth + 1:
        raise LGAError(f"num_ffms must be between 1 and {config.depth + 1}, got {config.num_ffms}")
    if config.embed_dim % config.attn_ratio or config.embed_dim % config.mlp_reduction:
        raise LGAError(f"embed_dim {config.embed_dim} must divide by attn_ratio and mlp_reduction")
    if config.train_encoder_stages:
        raise LGAError(f"{config.preset} has no encoder stages to train apart: train its whole ViT "
                       f"(--train-encoder) or none of it")


def grid_size(config: ArchitectureFields) -> int:
    """One token per patch: 64 for SAM at 1024 px with 16-px patches."""
    return config.image_size // config.patch_size


def fusion_widths(config: ArchitectureFields) -> tuple[int, ...]:
    """Every FFM works at the ViT's one width."""
    return (config.embed_dim,) * config.num_ffms


SPEC = FamilySpec(name="sam_vit", check=check, grid_size=grid_size, fusion_widths=fusion_widths,
                  fp16_fp32_ops=SHARED_FP16_FP32_OPS, int8_fp32_scopes=INT8_FP32_SCOPES,
                  ov_int8_fp32_scopes=OV_INT8_FP32_SCOPES)
