"""The probe step of benchmarks/gpu_check.sh: can this venv run every later step, on a GPU?

    python benchmarks/gpu_probe.py OUTDIR

Imports every module a later step needs (REQUIRED: checkpoints, export, bench and its plots;
BACKENDS: TensorRT and ONNX Runtime, which may be missing with --allow-missing), records the GPU,
the versions and whether ONNX Runtime's CUDA provider really loads (listed is not enough) in
OUTDIR/environment.json and .txt. Exit 0 when the check can go on; otherwise one last line
naming what is missing - a missing module is an install-set problem, not "no GPU".
tests/test_gpu_ci.py runs it in the dev venv.
"""

from __future__ import annotations

import importlib
import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

# module -> what needs it (a missing one fails the probe).
REQUIRED = {
    "torch": "checkpoints, export, the PyTorch reference",
    "torchvision": "segment-anything's import",
    "segment_anything": "the SAM image encoder",
    "transformers": "the text encoder",
    "safetensors": "checkpoints",
    "onnx": "export",
    "onnxscript": "export (dynamo)",
    "matplotlib": "lga-bench's plots",
    "lga_export": "everything",
}
# Backends: missing ones are verdicts (trt_ok / ort_gpu_ok), not probe failures.
BACKENDS = ("onnxruntime", "tensorrt", "polygraphy")


def _versions(modules: list[str]) -> dict[str, str]:
    found = {}
    for name in modules:
        try:
            found[name] = str(getattr(importlib.import_module(name), "__version__", "?"))
        except Exception as exc:  # noqa: BLE001 - a broken install counts as missing
            found[name] = f"NOT AVAILABLE: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return found


def _nvidia_smi() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap",
                               "--format=csv,noheader"], capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception as exc:  # noqa: BLE001
        return f"not available ({exc})"


def _ort_gpu_problem(env: dict[str, Any]) -> str | None:
    """None when ONNX Runtime's CUDA provider loads on a GPU here; else why not, in one line."""
    if str(env["onnxruntime"]).startswith("NOT AVAILABLE"):
        return f"onnxruntime does not import ({env['onnxruntime']})"
    if not env["cuda_available"]:
        return "no CUDA GPU"
    import onnxruntime

    from lga_export.runtime.ort_runner import cuda_provider_problem, default_providers

    return cuda_provider_problem(onnxruntime, default_providers("cuda")[0])


def probe(out: Path) -> int:
    env: dict[str, Any] = {"python": platform.python_version(), "nvidia_smi": _nvidia_smi()}
    env.update(_versions([*REQUIRED, *BACKENDS]))
    missing = [name for name in REQUIRED if str(env[name]).startswith("NOT AVAILABLE")]
    env["missing"] = missing
    env["cuda_available"] = False
    if "torch" not in missing:
        import torch

        env["cuda_available"] = torch.cuda.is_available()
        env["gpu"] = torch.cuda.get_device_name(0) if env["cuda_available"] else None
        env["torch_cuda"] = torch.version.cuda
    try:
        import onnxruntime

        env["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except Exception:  # noqa: BLE001
        env["onnxruntime_providers"] = []
    env["ort_gpu_problem"] = None if missing else _ort_gpu_problem(env)
    env["ort_gpu_ok"] = not missing and env["ort_gpu_problem"] is None
    env["trt_ok"] = not str(env["tensorrt"]).startswith("NOT AVAILABLE") and \
        not str(env["polygraphy"]).startswith("NOT AVAILABLE") and env["cuda_available"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "environment.json").write_text(json.dumps(env, indent=2) + "\n")
    (out / "environment.txt").write_text("".join(f"{k}: {v}\n" for k, v in env.items()))
    print(json.dumps(env, indent=2))
    if missing:
        print(f"the venv lacks {', '.join(missing)} ({'; '.join(REQUIRED[m] for m in missing)}): its install set "
              f"is incomplete; fix pyproject's gpu-bench extra and rerun with --fresh", file=sys.stderr)
        return 1
    if not env["cuda_available"]:
        print("no CUDA GPU visible to torch: this is a GPU check", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/gpu_probe.py OUTDIR")
    sys.exit(probe(Path(sys.argv[1])))
