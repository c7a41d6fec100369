"""TensorRT optimisation profiles derived from the graph specs (pure Python, no TensorRT).

One profile per engine. The bounds live inside what the export declares
(`contract.AXIS_BOUNDS`: batch 1..64, sequence 2..512), so an engine never promises a shape the
ONNX graph was not exported for. The opt shapes are where real inputs are, because TensorRT
tunes its kernels for them: batch opt = 2 (the middle of what lga-bench runs, clamped to the
bounds), sequence opt = 32 tokens (a typical report; the tokenizer pads to the longest report
of the batch, not to max_text_length). Both can be overridden.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from lga_export.config import LGAConfig
from lga_export.errors import LGAError
from lga_export.contract import AXIS_BOUNDS, BATCH, SEQUENCE, GraphSpec

Shape = tuple[int, ...]
Profile = dict[str, tuple[Shape, Shape, Shape]]  # input name -> (min, opt, max)

DEFAULT_OPT_BATCH = 2
DEFAULT_OPT_TEXT_LENGTH = 32  # tokens of a typical QaTa report, [CLS] and [SEP] included
MIN_TEXT_LENGTH = AXIS_BOUNDS[SEQUENCE][0]  # [CLS] + [SEP]: the export declares no shorter sequence


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(value, high))


@dataclass(frozen=True)
class ProfileBounds:
    """The user's choice of dynamic-axis bounds; checked once so every engine agrees."""

    min_batch: int = 1
    opt_batch: int = DEFAULT_OPT_BATCH
    max_batch: int = 4
    opt_text_length: int = DEFAULT_OPT_TEXT_LENGTH
    max_text_length: int = 128
    min_text_length: int = MIN_TEXT_LENGTH

    def __post_init__(self) -> None:
        low, high = AXIS_BOUNDS[BATCH]
        if not low <= self.min_batch <= self.opt_batch <= self.max_batch <= high:
            raise LGAError(f"batch bounds must satisfy {low} <= min <= opt <= max <= {high} (the export's "
                           f"declared batch range), got min {self.min_batch}, opt {self.opt_batch}, "
                           f"max {self.max_batch}")
        low, high = AXIS_BOUNDS[SEQUENCE]
        if not low <= self.min_text_length <= self.opt_text_length <= self.max_text_length <= high:
            raise LGAError(f"text length bounds must satisfy {low} <= min <= opt <= max <= {high} (the export's "
                           f"declared sequence range), got min {self.min_text_length}, opt "
                           f"{self.opt_text_length} (--opt-text-length), max {self.max_text_length} "
                           f"(--max-text-length)")

    @classmethod
    def for_config(cls, config: LGAConfig, min_batch: int = 1, opt_batch: int | None = None,
                   max_batch: int = 4, max_text_length: int | None = None,
                   opt_text_length: int | None = None) -> "ProfileBounds":
        """Defaults: batch opt = 2 clamped to [min, max]; text length max = the tokenizer's limit
        (config.max_text_length), opt = 32 tokens clamped to [2, max]."""
        max_text = config.max_text_length if max_text_length is None else max_text_length
        if opt_batch is None:
            opt_batch = _clamp(DEFAULT_OPT_BATCH, min_batch, max_batch)
        if opt_text_length is None:
            opt_text_length = _clamp(DEFAULT_OPT_TEXT_LENGTH, MIN_TEXT_LENGTH, max_text)
        return cls(min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch,
                   opt_text_length=opt_text_length, max_text_length=max_text)

    def sizes(self) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
        """min / opt / max values of every symbolic axis named in the specs."""
        return ({BATCH: self.min_batch, SEQUENCE: self.min_text_length},
                {BATCH: self.opt_batch, SEQUENCE: self.opt_text_length},
                {BATCH: self.max_batch, SEQUENCE: self.max_text_length})

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def engine_profile(spec: GraphSpec, bounds: ProfileBounds) -> Profile:
    """The optimisation profile of one graph, straight from its spec."""
    return spec.profile(*bounds.sizes())


def profile_to_json(profile: Profile) -> dict[str, dict[str, list[int]]]:
    return {name: {"min": list(lo), "opt": list(opt), "max": list(hi)} for name, (lo, opt, hi) in profile.items()}


def profile_from_json(raw: dict[str, dict[str, list[int]]]) -> Profile:
    return {name: (tuple(v["min"]), tuple(v["opt"]), tuple(v["max"])) for name, v in raw.items()}


def check_shapes(graph: str, profile: Profile, shapes: dict[str, Shape]) -> None:
    """Refuse inputs the engine was not built for, naming the input, its shape and the range."""
    missing = sorted(set(profile) - set(shapes))
    if missing:
        raise LGAError(f"{graph}: missing inputs {missing}; the engine expects {sorted(profile)}")
    for name, (lo, _, hi) in profile.items():
        shape = tuple(shapes[name])
        if len(shape) != len(lo) or any(not a <= s <= b for s, a, b in zip(shape, lo, hi)):
            raise LGAError(f"{graph}: input {name} has shape {shape}, outside the engine's profile "
                           f"{tuple(lo)}..{tuple(hi)}; rebuild with wider bounds (lga-export trt --max-batch/"
                           f"--max-text-length)")
