"""Which (backend, precision) pairs run here, and why the others do not.

Nothing is dropped silently: every requested pair either runs or gets a reason. Runners come
from the runner factory like everywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable
from pathlib import Path

from lga_export.errors import LGAError
from lga_export.export.specs import PRECISIONS
from lga_export.runtime.registry import RUNNERS, runner_class

BACKENDS = tuple(RUNNERS)


@dataclass(frozen=True)
class Case:
    backend: str
    precision: str

    @property
    def label(self) -> str:
        return f"{self.backend}-{self.precision}"


REFERENCE = Case("torch", "fp32")


def parse_list(text: str | list[str] | tuple[str, ...], allowed: tuple[str, ...], what: str,
               canonical: Callable[[str], str] = str.strip) -> list[str]:
    """Comma list -> validated, de-duplicated list in the given order; `canonical` maps each item
    to its allowed spelling first (backend aliases)."""
    items = [canonical(t) for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    unknown = [t for t in items if t not in allowed]
    if unknown or not items:
        raise LGAError(f"unknown {what} {unknown or '(none given)'}; choose from {', '.join(allowed)}")
    return list(dict.fromkeys(items))


def requested_cases(backends: list[str], precisions: list[str]) -> list[Case]:
    """The reference first, then every requested pair."""
    cases = [REFERENCE]
    cases += [Case(b, p) for b in backends for p in precisions if Case(b, p) != REFERENCE]
    return cases


def _tensorrt_problem() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - ImportError or a broken install: both mean "not here"
        return f"TensorRT is not importable ({type(exc).__name__}: {exc}); pip install \"lga-export[tensorrt]\""
    import torch

    if not torch.cuda.is_available():
        return "TensorRT needs a CUDA GPU and torch sees none"
    return None


def _openvino_problem(precision: str, device: str) -> str | None:
    """OpenVINO runs here on the CPU; BF16 only where the CPU computes it natively (elsewhere the
    runner would fall back to FP32, and a 'bf16' row of FP32 figures would mislead)."""
    try:
        import openvino  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - ImportError or a broken install: both mean "not here"
        return f"OpenVINO is not importable ({type(exc).__name__}: {exc}); pip install openvino"
    if not device.startswith("cpu"):
        return f"the OpenVINO backend runs on the CPU, and this run is on {device}"
    if precision == "bf16":
        from lga_export.runtime.openvino_runner import cpu_bf16_support

        support = cpu_bf16_support()
        if not support["supported"]:
            return ("this CPU has no native BF16 (no avx512_bf16 or amx_bf16 flag): OpenVINO would run FP32")
    return None


def static_skip_reason(case: Case, device: str, export_precisions: list[str] | None,
                       engines_dir: Path | None, int8_backend: str | None = None) -> str | None:
    """Why `case` cannot run here, known before anything is loaded (None: try it). `int8_backend`:
    which backend runs the export's INT8 graph ('ort', 'ov'; ExportArtifact.int8_backend)."""
    import torch

    if case.precision not in runner_class(case.backend).precisions:
        return f"backend {case.backend} has no {case.precision} path (it runs {runner_class(case.backend).precisions})"
    if case.backend in ("torch", "torch-compile"):
        if case.precision == "bf16" and device.startswith("cuda") and not torch.cuda.is_bf16_supported():
            return "this GPU has no BF16 support"
        return None
    if case.backend == "ort":
        if export_precisions is not None and case.precision not in export_precisions:
            flag = {"fp16": " --fp16", "int8": " --int8 dynamic"}.get(case.precision, "")
            return f"the export folder has no {case.precision} graphs; re-export with lga-export onnx{flag}"
        if case.precision == "int8" and int8_backend == "ov":
            return "the export's INT8 graph is an OpenVINO IR (--int8 ov): ov-int8 runs it"
        return None
    if case.backend == "ov":
        if case.precision == "int8" and int8_backend != "ov" and export_precisions is not None:
            return ("the export's INT8 graph is ONNX Runtime's (--int8 dynamic|static): ort-int8 runs it"
                    if int8_backend else "the export folder has no INT8 graphs; re-export with lga-export onnx --int8 ov")
        return _openvino_problem(case.precision, device)
    if case.backend == "trt":
        if engines_dir is None:
            return "no --engines folder given (build engines with lga-export trt)"
        return _tensorrt_problem()
    return None
