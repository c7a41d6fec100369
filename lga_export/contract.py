"""The single source of the two exported graphs: graph and tensor names, dtypes, dynamic axes
and their bounds, dummy inputs, per-precision tolerances and TensorRT profile bounds.

Exporter, validator, runners, comparator, engine builder and benchmark all read these; no
other module spells a graph or tensor name. It is the contract between the exporter (which
writes graphs to it) and the runtimes (which check feeds against it), so it lives at the
package root below both rather than inside either. This module imports numpy only, so the
lean inference install can read it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lga_export.config import LGAConfig
from lga_export.errors import LGAError

# Graph names.
TEXT_GRAPH = "text_encoder"
IMAGE_GRAPH = "lga_image"
GRAPHS = (TEXT_GRAPH, IMAGE_GRAPH)
# Tensor names.
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
TEXT_EMBEDDING = "text_embedding"
IMAGE = "image"
MASK_LOGITS = "mask_logits"

# Symbolic axes and the bounds the export declares for them (inclusive).
BATCH = "batch"
SEQUENCE = "sequence"
AXIS_BOUNDS: dict[str, tuple[int, int]] = {BATCH: (1, 64), SEQUENCE: (2, 512)}

PRECISIONS = ("fp32", "fp16", "bf16", "int8")


@dataclass(frozen=True)
class Tolerance:
    """What a backend at one precision must achieve against the PyTorch FP32 reference.

    `atol`: max |output difference| (None: not gated; only FP32 is expected to match closely);
    `min_dice`: worst per-sample mask Dice agreement.
    """

    atol: float | None
    min_dice: float


TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(atol=1e-4, min_dice=0.999),
    "fp16": Tolerance(atol=None, min_dice=0.99),
    "bf16": Tolerance(atol=None, min_dice=0.99),
    "int8": Tolerance(atol=None, min_dice=0.98),
}


def tolerance(precision: str) -> Tolerance:
    try:
        return TOLERANCES[precision]
    except KeyError:
        raise LGAError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}") from None


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name as seen by the runtime (I/O stays FP32 in FP16 and INT8 graphs)
    shape: tuple[int | str, ...]  # str = symbolic (dynamic) axis

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    def concrete(self, sizes: dict[str, int]) -> tuple[int, ...]:
        return tuple(sizes[d] if isinstance(d, str) else d for d in self.shape)

    def problem(self, array: object) -> str | None:
        """Why `array` is not a valid value of this tensor (dtype, rank, sizes, bounds), or None."""
        if not isinstance(array, np.ndarray):
            return f"{self.name} must be a numpy array, not {type(array).__name__}"
        if array.dtype != np.dtype(self.dtype):
            return f"{self.name} has dtype {array.dtype}, the graph needs {self.dtype}"
        if array.ndim != len(self.shape):
            return f"{self.name} has shape {array.shape}, the graph needs rank {len(self.shape)} {self.shape}"
        for axis, (size, want) in enumerate(zip(array.shape, self.shape)):
            if isinstance(want, int) and size != want:
                return f"{self.name} has shape {array.shape}, the graph needs {self.shape} (axis {axis})"
            if isinstance(want, str):
                low, high = AXIS_BOUNDS[want]
                if not low <= size <= high:
                    return f"{self.name} has {want} {size} (axis {axis}), the graph accepts {low}..{high}"
        return None


@dataclass(frozen=True)
class GraphSpec:
    """Everything about one exported graph."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    masks: bool  # True when the output is mask logits (compared by mask agreement too)

    def filename(self, precision: str = "fp32") -> str:
        return f"{self.name}.onnx" if precision == "fp32" else f"{self.name}.{precision}.onnx"

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    @property
    def output(self) -> str:
        """The graph's one output."""
        return self.outputs[0].name

    def check_feeds(self, feeds: dict[str, np.ndarray]) -> None:
        """Refuse feeds that do not fit the graph before a backend sees them (one line)."""
        missing = [n for n in self.input_names if n not in feeds]
        extra = sorted(set(feeds) - set(self.input_names))
        if missing or extra:
            raise LGAError(f"{self.name}: feeds {sorted(feeds)} do not match the graph's inputs {self.input_names}")
        sizes: dict[str, int] = {}
        for tensor in self.inputs:
            problem = tensor.problem(feeds[tensor.name])
            if problem:
                raise LGAError(f"{self.name}: {problem}")
            for axis, symbol in tensor.dynamic_axes.items():
                size = feeds[tensor.name].shape[axis]
                if sizes.setdefault(symbol, size) != size:
                    raise LGAError(f"{self.name}: {tensor.name} has {symbol} {size}, another input has {sizes[symbol]}")

    def profile(self, min_sizes: dict[str, int], opt_sizes: dict[str, int],
                max_sizes: dict[str, int]) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """TensorRT optimisation profile: input name -> (min, opt, max) shapes."""
        return {t.name: (t.concrete(min_sizes), t.concrete(opt_sizes), t.concrete(max_sizes))
                for t in self.inputs}


def text_graph_spec(config: LGAConfig) -> GraphSpec:
    """input_ids, attention_mask [B, S] -> text_embedding [B, 1, C] (pooling and projection inside)."""
    return GraphSpec(
        name=TEXT_GRAPH,
        inputs=(TensorSpec(INPUT_IDS, "int64", (BATCH, SEQUENCE)),
                TensorSpec(ATTENTION_MASK, "int64", (BATCH, SEQUENCE))),
        outputs=(TensorSpec(TEXT_EMBEDDING, "float32", (BATCH, 1, config.text_dim)),),
        masks=False,
    )


def image_graph_spec(config: LGAConfig) -> GraphSpec:
    """image [B, 3, H, W] + text_embedding [B, 1, C] -> mask_logits [B, 1, 256, 256]."""
    size, mask = config.image_size, config.mask_size
    return GraphSpec(
        name=IMAGE_GRAPH,
        inputs=(TensorSpec(IMAGE, "float32", (BATCH, 3, size, size)),
                TensorSpec(TEXT_EMBEDDING, "float32", (BATCH, 1, config.text_dim))),
        outputs=(TensorSpec(MASK_LOGITS, "float32", (BATCH, 1, mask, mask)),),
        masks=True,
    )


def graph_specs(config: LGAConfig) -> tuple[GraphSpec, GraphSpec]:
    return text_graph_spec(config), image_graph_spec(config)


def specs_by_name(config: LGAConfig) -> dict[str, GraphSpec]:
    return {spec.name: spec for spec in graph_specs(config)}


def text_feeds(input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
    return {INPUT_IDS: input_ids, ATTENTION_MASK: attention_mask}


def image_feeds(images: np.ndarray, text_embedding: np.ndarray) -> dict[str, np.ndarray]:
    return {IMAGE: images, TEXT_EMBEDDING: text_embedding}


def dummy_inputs(spec: GraphSpec, sizes: dict[str, int], seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs of the right names, shapes and dtypes (token ids kept small and valid)."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for tensor in spec.inputs:
        shape = tensor.concrete(sizes)
        if tensor.name == ATTENTION_MASK:
            feeds[tensor.name] = np.ones(shape, dtype=np.int64)
        elif tensor.dtype == "int64":
            feeds[tensor.name] = rng.integers(1000, 2000, size=shape, dtype=np.int64)
        else:
            feeds[tensor.name] = rng.standard_normal(shape).astype(tensor.dtype)
    return feeds
