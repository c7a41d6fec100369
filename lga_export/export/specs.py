"""One spec per exported graph: names, dtypes, dynamic axes, dummy inputs, tolerances and
TensorRT profile bounds. Exporter, validator, runners, engine builder and benchmark all read
these; I/O names are never repeated as string literals elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lga_export.config import LGAConfig

PRECISIONS = ("fp32", "fp16")
BATCH = "batch"
SEQUENCE = "sequence"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name as seen by the runtime (I/O stays FP32 in FP16 graphs)
    shape: tuple[int | str, ...]  # str = symbolic (dynamic) axis

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    def concrete(self, sizes: dict[str, int]) -> tuple[int, ...]:
        return tuple(sizes[d] if isinstance(d, str) else d for d in self.shape)


@dataclass(frozen=True)
class GraphSpec:
    """Everything about one exported graph."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    atol: dict[str, float] = field(default_factory=dict)  # max |output diff| per precision (absent: not gated)
    min_dice: dict[str, float] = field(default_factory=dict)  # per-sample mask agreement per precision

    def filename(self, precision: str = "fp32") -> str:
        return f"{self.name}.onnx" if precision == "fp32" else f"{self.name}.{precision}.onnx"

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {t.name: t.dynamic_axes for t in self.inputs + self.outputs if t.dynamic_axes}

    def input_shapes(self, sizes: dict[str, int]) -> dict[str, tuple[int, ...]]:
        return {t.name: t.concrete(sizes) for t in self.inputs}

    def profile(self, min_sizes: dict[str, int], opt_sizes: dict[str, int],
                max_sizes: dict[str, int]) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """TensorRT optimisation profile: input name -> (min, opt, max) shapes."""
        return {t.name: (t.concrete(min_sizes), t.concrete(opt_sizes), t.concrete(max_sizes))
                for t in self.inputs}


def text_graph_spec(config: LGAConfig) -> GraphSpec:
    """input_ids, attention_mask [B, S] -> text_embedding [B, 1, C] (pooling and projection inside)."""
    return GraphSpec(
        name="text_encoder",
        inputs=(TensorSpec("input_ids", "int64", (BATCH, SEQUENCE)),
                TensorSpec("attention_mask", "int64", (BATCH, SEQUENCE))),
        outputs=(TensorSpec("text_embedding", "float32", (BATCH, 1, config.embed_dim)),),
        atol={"fp32": 1e-4},
    )


def image_graph_spec(config: LGAConfig) -> GraphSpec:
    """image [B, 3, H, W] + text_embedding [B, 1, C] -> mask_logits [B, 1, 256, 256]."""
    size, mask = config.image_size, config.mask_size
    return GraphSpec(
        name="lga_image",
        inputs=(TensorSpec("image", "float32", (BATCH, 3, size, size)),
                TensorSpec("text_embedding", "float32", (BATCH, 1, config.embed_dim))),
        outputs=(TensorSpec("mask_logits", "float32", (BATCH, 1, mask, mask)),),
        atol={"fp32": 1e-4},
        min_dice={"fp32": 0.999, "fp16": 0.99},
    )


def graph_specs(config: LGAConfig) -> tuple[GraphSpec, GraphSpec]:
    return text_graph_spec(config), image_graph_spec(config)


def dummy_inputs(spec: GraphSpec, sizes: dict[str, int], seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs of the right names, shapes and dtypes (token ids kept small and valid)."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for tensor in spec.inputs:
        shape = tensor.concrete(sizes)
        if tensor.name == "attention_mask":
            feeds[tensor.name] = np.ones(shape, dtype=np.int64)
        elif tensor.dtype == "int64":
            feeds[tensor.name] = rng.integers(1000, 2000, size=shape, dtype=np.int64)
        else:
            feeds[tensor.name] = rng.standard_normal(shape).astype(tensor.dtype)
    return feeds
