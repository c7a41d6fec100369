"""What the numbers were measured on: CPU, cores, GPU, load, library versions, peak memory."""

from __future__ import annotations

import os
import platform
import resource
from typing import Any

from lga_export.runtime.host import cpu_identity



def cpu_flags() -> list[str]:
    """The SIMD flags that decide FP32/BF16/INT8 speed on x86 (avx512*, amx*, avx2, fma)."""
    return [f for f in cpu_identity()[1] if f.startswith(("avx512", "amx", "avx2", "fma", "avx_vnni"))]


def gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def device_memory_mb() -> dict[str, Any]:
    """GPU memory in MiB: in use on the device as the driver sees it (every library's allocations:
    TensorRT, ONNX Runtime, PyTorch) and PyTorch's own allocator peak, labelled as such."""
    import torch

    free, total = torch.cuda.mem_get_info()
    return {"driver_used_mb": (total - free) / 2**20, "driver_total_mb": total / 2**20,
            "torch_allocator_peak_mb": torch.cuda.max_memory_allocated() / 2**20}


def machine_info() -> dict[str, Any]:
    return {"cpu": cpu_identity()[0], "cpu_flags": cpu_flags(), "logical_cores": os.cpu_count(),
            "platform": platform.platform(), "gpu": gpu_name(), "load_average_start": list(os.getloadavg())}


def peak_rss_mb() -> float:
    """The process's resident-set high-water mark so far (monotonic over the run), in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
