"""What a model family declares without PyTorch: the config arithmetic and checks that differ between
families, and what its exported graphs keep in FP32. The config, the exporter, both quantisers and
the lean runtime read this; `family_specs/<name>.py` holds each family's, `families/<name>.py` its
torch builder."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Protocol


class ArchitectureFields(Protocol):
    """The fields of an `LGAConfig` the family declarations read (the config imports this package,
    so the declarations name what they need instead of importing the config)."""

    family: str
    preset: str
    image_size: int
    patch_size: int
    depth: int
    embed_dim: int
    num_ffms: int
    attn_ratio: int
    mlp_reduction: int
    stage_dims: tuple[int, ...]
    stage_depths: tuple[int, ...]
    stage_heads: tuple[int, ...]
    stage_windows: tuple[int, ...]
    train_image_encoder: bool
    train_encoder_stages: int

    @property
    def ffm_stage_indexes(self) -> tuple[int, ...]: ...

# Ops kept in FP32 inside FP16 graphs (both graphs: the text branch is every family's): normalisations
# (LayerNorm and SAM's LayerNorm2d, which exports as ReduceMean/Pow/Sqrt/Div), softmax, and the text
# pooling reductions.
SHARED_FP16_FP32_OPS = ("LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "Pow", "Sqrt", "Div",
                        "Clip", "Max", "Resize", "Erf")
# Module path (a regular expression over the PyTorch module scope the dynamo exporter records on
# every node) of the fusion modules, which every family names `ffms`.
FFM_SCOPE = r"^model\.ffms\."


@dataclass(frozen=True)
class FamilySpec:
    """One family's torch-free declarations.

    `int8_fp32_scopes`: module-path pattern -> why, the nodes ONNX Runtime's static INT8 keeps FP32;
    `ov_int8_fp32_scopes`: the same for NNCF's OpenVINO INT8 (in the order recorded in manifests);
    `dynamic_int8_per_channel`: ONNX Runtime's dynamic INT8 gives each weight output channel its own
    scale instead of one per tensor; `dynamic_int8_fp32_scopes`: module-path pattern -> why, the
    nodes it keeps FP32."""

    name: str
    check: Callable[[ArchitectureFields], None]  # raises LGAError for an architecture this family cannot build
    grid_size: Callable[[ArchitectureFields], int]  # side of the image-embedding grid
    fusion_widths: Callable[[ArchitectureFields], tuple[int, ...]]  # each FFM's width, the image-only one last
    fp16_fp32_ops: tuple[str, ...]
    int8_fp32_scopes: Mapping[str, str]
    ov_int8_fp32_scopes: Mapping[str, str]
    dynamic_int8_per_channel: bool = False
    dynamic_int8_fp32_scopes: Mapping[str, str] = field(default_factory=dict)
