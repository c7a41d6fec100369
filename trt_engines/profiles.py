"""TensorRT optimisation profiles derived from the graph specs (pure Python, no TensorRT).

One profile per engine: batch min/opt/max for both graphs, and for the text graph the token
sequence from 1 to max_text_length (opt at the maximum, where the tokenizer pads to).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from lga_export.config import LGAConfig
from lga_export.errors import LGAError
from lga_export.export.specs import BATCH, SEQUENCE, GraphSpec

Shape = tuple[int, ...]
Profile = dict[str, tuple[Shape, Shape, Shape]]  # input name -> (min, opt, max)


@dataclass(frozen=True)
class ProfileBounds:
    """The user's choice of dynamic-axis bounds; checked once so every engine agrees."""

    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 4
    max_text_length: int = 128

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise LGAError(f"batch bounds must satisfy 1 <= min <= opt <= max, got min {self.min_batch}, "
                           f"opt {self.opt_batch}, max {self.max_batch}")
        if self.max_text_length < 1:
            raise LGAError(f"--max-text-length must be at least 1, got {self.max_text_length}")

    @classmethod
    def for_config(cls, config: LGAConfig, min_batch: int = 1, opt_batch: int | None = None,
                   max_batch: int = 4, max_text_length: int | None = None) -> "ProfileBounds":
        """Defaults from the model: opt batch = min batch, text length = the tokenizer's limit."""
        return cls(min_batch=min_batch, opt_batch=min_batch if opt_batch is None else opt_batch,
                   max_batch=max_batch,
                   max_text_length=config.max_text_length if max_text_length is None else max_text_length)

    def sizes(self) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
        """min / opt / max values of every symbolic axis named in the specs."""
        return ({BATCH: self.min_batch, SEQUENCE: 1},
                {BATCH: self.opt_batch, SEQUENCE: self.max_text_length},
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
