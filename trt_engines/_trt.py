"""Lazy access to TensorRT and the GPU: the only place `import tensorrt` happens.

TensorRT and CUDA are optional; every CPU path of lga-export must work without them, so
they are imported inside functions and a missing piece becomes a one-line LGAError (exit 2).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from lga_export.errors import LGAError

INSTALL_HINT = ('pip install "lga-export[tensorrt]" (or pip install tensorrt '
                '--extra-index-url https://pypi.nvidia.com) on a machine with a CUDA GPU')


def import_tensorrt() -> ModuleType:
    """The `tensorrt` module, or a one-line error saying how to install it."""
    try:
        import tensorrt  # noqa: PLC0415 - optional dependency, imported lazily on purpose
    except ImportError as exc:
        raise LGAError(f"TensorRT is not installed ({exc.name or 'tensorrt'} missing); {INSTALL_HINT}") from None
    except Exception as exc:  # a broken install (missing libnvinfer) raises OSError and friends
        raise LGAError(f"TensorRT is installed but does not load ({type(exc).__name__}: {exc}); "
                       f"reinstall it: {INSTALL_HINT}") from None
    return tensorrt


def require_cuda() -> None:
    """Fail with one line when no CUDA GPU is visible (TensorRT engines need one)."""
    import torch

    if not torch.cuda.is_available():
        raise LGAError("no CUDA GPU is visible (torch.cuda.is_available() is False); TensorRT engines need an "
                       "NVIDIA GPU with a working driver")


def require_tensorrt_and_gpu() -> ModuleType:
    """TensorRT, after checking that both it and a GPU are present."""
    trt = import_tensorrt()
    require_cuda()
    return trt


def current_environment(device: int | None = None) -> dict[str, Any]:
    """What an engine is tied to: TensorRT version, GPU model and compute capability."""
    import torch

    trt = import_tensorrt()
    require_cuda()
    index = torch.cuda.current_device() if device is None else device
    major, minor = torch.cuda.get_device_capability(index)
    return {"tensorrt_version": trt.__version__, "gpu_name": torch.cuda.get_device_name(index),
            "compute_capability": f"{major}.{minor}"}
