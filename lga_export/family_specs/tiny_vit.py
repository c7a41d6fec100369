"""TinyViT's torch-free declarations (preset `lite`, LiteMedSAM's encoder): config checks, grid and
FFM widths, and what its reduced-precision graphs keep in FP32."""

from __future__ import annotations

from lga_export.errors import LGAError
from lga_export.family_specs.spec import FFM_SCOPE, SHARED_FP16_FP32_OPS, ArchitectureFields, FamilySpec

# TinyViT names its stem `patch_embed` (two stride-2 convolutions) and its output `neck` (SAM's
# convolutions and LayerNorm2d), and the mask decoder is SAM's, so SAM-ViT's INT8 scopes name the
# same kinds of module here. Calibrated INT8 (ONNX Runtime static and NNCF's OpenVINO INT8) also
# keeps the first three stages FP32 (MBConv stage 0 and transformer stages 1-2): only stage 3, the
# text carry and the dense PE are INT8. Worst / mean mask agreement with ONNX Runtime FP32 over 8
# QaTa Val images, the shipped stage-5 model, 32 calibration images (record
# 2026-12-03-lite-stage6-verdict-and-ov-int8): OpenVINO with the stem, neck, decoder and FFMs FP32
# 0.933 / 0.984; with stage 0 as well 0.969; stages 0-1 0.975; stages 0-1 and 3 0.981; stages 0-2
# 0.9915 / 0.9975. ONNX Runtime static with the stem, neck and decoder FP32 0.320 / 0.641; with
# stages 0-2 0.983 / 0.994; with every stage 0.996.
INT8_FP32_SCOPES: dict[str, str] = {
    r"^model\.image_encoder\.patch_embed": "convolutional stem (as SAM-ViT's patch embedding)",
    r"^model\.image_encoder\.neck": "neck convolutions before the decoder (as SAM-ViT's)",
    r"^model\.mask_decoder\.": "SAM's mask decoder, shared with SAM-ViT",
    r"^model\.image_encoder\.layers\.[012]\.": "stages 0-2; with them FP32 worst agreement 0.933 -> 0.9915 "
                                                "(OpenVINO), 0.320 -> 0.983 (static)",
}
OV_INT8_FP32_SCOPES: dict[str, str] = {FFM_SCOPE: "fusion modules (as SAM-ViT's)", **INT8_FP32_SCOPES}

# ONNX Runtime's dynamic INT8: weights per output channel, and the first two transformer stages
# FP32. Worst / mean mask agreement with ONNX Runtime FP32 over 8 QaTa Val images, the third
# noise-trained lite model (record 2026-12-02-lite-int8-bf16-islands): per tensor 0.947 / 0.979;
# per channel 0.974 / 0.992; with stage 1, 2 or 3 alone FP32 0.974 / 0.982 / 0.977; stages 2-3
# 0.983; stages 1-2 0.995 / 0.998 at 0.92x ONNX Runtime FP32's latency (all INT8: 0.83x).
DYNAMIC_INT8_PER_CHANNEL = True
DYNAMIC_INT8_FP32_SCOPES: dict[str, str] = {
    r"^model\.image_encoder\.layers\.[12]\.": "transformer stages 1-2; with them FP32 worst agreement 0.974 -> 0.995",
}


def check(config: ArchitectureFields) -> None:
    """Per-stage lists of one length, one FFM at the input of each transformer stage at most (plus
    the image-only one after the last), and stage widths the FFMs can split."""
    stages = len(config.stage_dims)
    if stages < 2 or not (len(config.stage_depths) == len(config.stage_heads) == len(config.stage_windows) == stages):
        raise LGAError("a tiny_vit config needs stage_dims, stage_depths, stage_heads and stage_windows of one "
                       "length (at least 2 stages)")
    if config.num_ffms < 1 or config.num_ffms > stages:
        raise LGAError(f"num_ffms must be between 1 and {stages} for {config.preset} (one FFM at the input of each "
                       f"transformer stage, one after the last), got {config.num_ffms}")
    if any(dim % config.attn_ratio or dim % config.mlp_reduction for dim in config.stage_dims):
        raise LGAError(f"every stage width {config.stage_dims} must divide by attn_ratio and mlp_reduction")
    fused = len(config.ffm_stage_indexes)
    if not 0 <= config.train_encoder_stages <= fused:
        raise LGAError(f"train_encoder_stages must be between 0 and {fused} for {config.preset} with {config.num_ffms} "
                       f"FFMs (only stages with an FFM at their input: the stages before stay frozen and cached), "
                       f"got {config.train_encoder_stages}")
    if config.train_encoder_stages and config.train_image_encoder:
        raise LGAError("give either --train-encoder (the whole encoder) or --train-encoder-stages, not both")


def grid_size(config: ArchitectureFields) -> int:
    """TinyViT's output grid is a quarter of the image side (64 at 256 px), whatever its patch_size."""
    return config.image_size // 4


def fusion_widths(config: ArchitectureFields) -> tuple[int, ...]:
    """Each full FFM at its stage's width, the image-only one at the last stage's."""
    return tuple(config.stage_dims[i] for i in config.ffm_stage_indexes) + (config.stage_dims[-1],)


SPEC = FamilySpec(name="tiny_vit", check=check, grid_size=grid_size, fusion_widths=fusion_widths,
                  fp16_fp32_ops=SHARED_FP16_FP32_OPS, int8_fp32_scopes=INT8_FP32_SCOPES,
                  ov_int8_fp32_scopes=OV_INT8_FP32_SCOPES, dynamic_int8_per_channel=DYNAMIC_INT8_PER_CHANNEL,
                  dynamic_int8_fp32_scopes=DYNAMIC_INT8_FP32_SCOPES)
