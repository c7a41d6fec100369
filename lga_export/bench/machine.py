"""What the numbers were measured on: CPU, cores, GPU, load, library versions, peak memory."""

from __future__ import annotations

import gc
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


class DeviceMemory:
    """GPU memory of one bench case, as a peak above a baseline taken before it.

    Made after the previous case's memory was freed (the reference model moved back to the CPU,
    PyTorch's cached blocks emptied), so a case is not charged with another's weights. Driver
    figures (every library: TensorRT, ONNX Runtime, PyTorch) come from `mem_get_info`, which is a
    snapshot, so their peak is the highest of the snapshots `sample()` took during the case;
    PyTorch's allocator peak is exact but counts only PyTorch's own allocations."""

    def __init__(self) -> None:
        import torch

        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        self.baseline_used = self._driver_used()
        self.baseline_torch = torch.cuda.memory_allocated()
        self.peak_used = self.baseline_used

    @staticmethod
    def _driver_used() -> int:
        import torch

        free, total = torch.cuda.mem_get_info()
        return total - free

    def sample(self) -> None:
        """Take a driver snapshot (call after activation and after each batch's work)."""
        self.peak_used = max(self.peak_used, self._driver_used())

    def result(self) -> dict[str, Any]:
        import torch

        self.sample()
        return {"driver_baseline_mb": self.baseline_used / 2**20,
                "driver_peak_above_baseline_mb": (self.peak_used - self.baseline_used) / 2**20,
                "driver_note": "highest of mem_get_info snapshots during the case (sampled, not a true peak)",
                "torch_allocator_peak_above_baseline_mb":
                    (torch.cuda.max_memory_allocated() - self.baseline_torch) / 2**20}


def release_device_memory(model) -> None:
    """Move the reference model back to the CPU so the next case starts without its weights."""
    model.to("cpu")


def machine_info() -> dict[str, Any]:
    return {"cpu": cpu_identity()[0], "cpu_flags": cpu_flags(), "logical_cores": os.cpu_count(),
            "platform": platform.platform(), "gpu": gpu_name(), "load_average_start": list(os.getloadavg())}


def peak_rss_mb() -> float:
    """The process's resident-set high-water mark so far (monotonic over the run), in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
