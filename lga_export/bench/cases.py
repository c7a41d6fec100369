"""Which (backend, precision) pairs run here, the runner for each, and why the others do not.

Nothing is dropped silently: every requested pair either gets a runner or a reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lga_export.errors import LGAError
from lga_export.runtime.base import Runner

BACKENDS = ("torch", "torch-compile", "ort", "trt")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")


@dataclass(frozen=True)
class Case:
    backend: str
    precision: str

    @property
    def label(self) -> str:
        return f"{self.backend}-{self.precision}"


REFERENCE = Case("torch", "fp32")


def parse_list(text: str | list[str] | tuple[str, ...], allowed: tuple[str, ...], what: str) -> list[str]:
    """Comma list -> validated, de-duplicated list in the given order."""
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
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


def static_skip_reason(case: Case, device: str, engines_dir: Path | None) -> str | None:
    """Why `case` cannot run here, known before anything is loaded (None: try it)."""
    import torch

    if case.backend in ("torch", "torch-compile"):
        if case.precision == "int8":
            return "PyTorch INT8 is not benchmarked (no INT8 path for this model); see ort-int8"
        if case.precision == "bf16" and device == "cuda" and not torch.cuda.is_bf16_supported():
            return "this GPU has no BF16 support"
        return None
    if case.backend == "ort":
        if case.precision == "bf16":
            return "no BF16 ONNX graph is exported (ONNX Runtime's CPU provider lacks BF16 kernels for most ops)"
        return None
    if case.backend == "trt":
        if engines_dir is None:
            return "no --engines folder given (build engines with lga-export trt)"
        if case.precision not in ("fp32", "fp16"):
            return f"TensorRT engines are built FP32 or FP16 only, not {case.precision}"
        return _tensorrt_problem()
    return f"unknown backend {case.backend}"


def default_ort_providers(device: str) -> list[str]:
    """CUDA first where both torch and onnxruntime-gpu see a GPU, then the CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    providers = ["CPUExecutionProvider"]
    if device == "cuda" and "CUDAExecutionProvider" in available:
        providers.insert(0, "CUDAExecutionProvider")
    return providers


def make_runner(case: Case, model, device: str, threads: int | None, onnx_dir: Path | None,
                int8_graphs: dict[str, Path] | None, engines_dir: Path | None,
                ort_providers: list[str]) -> Runner:
    """The runner of `case` (not activated). Raises LGAError with the reason when it cannot exist."""
    if case.backend in ("torch", "torch-compile"):
        from lga_export.runtime.torch_runner import TorchRunner

        return TorchRunner(model, case.precision, device, compile=case.backend == "torch-compile")
    if case.backend == "ort":
        if onnx_dir is None:
            raise LGAError("no ONNX export available")
        if case.precision == "int8":
            from lga_export.bench.int8 import ExplicitGraphsRunner

            if not int8_graphs:
                raise LGAError("no INT8 graph was produced")
            # Dynamic-quantisation ops (MatMulInteger, DynamicQuantizeLinear) are CPU kernels.
            return ExplicitGraphsRunner(int8_graphs, "int8", ["CPUExecutionProvider"], threads)
        from lga_export.export.manifest import graph_file
        from lga_export.runtime.ort_runner import OnnxRuntimeRunner

        for graph in ("text_encoder", "lga_image"):
            graph_file(onnx_dir, graph, case.precision)  # raises with the re-export hint when absent
        return OnnxRuntimeRunner(onnx_dir, case.precision, ort_providers, threads)
    if case.backend == "trt":
        from lga_export.trt_engines.runner import TensorRTRunner

        return TensorRTRunner(engines_dir, case.precision, onnx_dir)
    raise LGAError(f"unknown backend {case.backend}")
