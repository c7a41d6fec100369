"""GPU path checks that run without a GPU: packaging of the GPU extra, a CUDA provider that is
requested but shadowed, CUDA-event timing plumbing, and the TF32 policy of the FP32 reference."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from lga_export.errors import LGAError

REPO = Path(__file__).resolve().parents[1]


def _closure(extra: str, extras: dict[str, list[str]], seen: set[str] | None = None) -> list[str]:
    """Every requirement an extra pulls in, following lga-export[...] self-references."""
    seen = seen if seen is not None else set()
    if extra in seen:
        return []
    seen.add(extra)
    found = []
    for requirement in extras[extra]:
        match = re.match(r"lga-export\[([^\]]+)\]", requirement)
        if match:
            for inner in match.group(1).split(","):
                found += _closure(inner.strip(), extras, seen)
        else:
            found.append(requirement)
    return found


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!\[ ;]", r, maxsplit=1)[0].lower() for r in requirements}


def test_gpu_extra_never_co_installs_the_cpu_onnxruntime():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    base = _names(project["dependencies"])
    assert "onnxruntime" not in base and "onnxruntime-gpu" not in base
    for extra in ("gpu", "tensorrt"):
        assert "onnxruntime" not in _names(_closure(extra, extras)), extra
    assert "onnxruntime-gpu" in _names(_closure("gpu", extras))
    assert "onnxruntime" in _names(_closure("cpu", extras))


@pytest.fixture(scope="module")
def export(tmp_path_factory, default_model):
    from lga_export.export.exporter import export_onnx

    out = tmp_path_factory.mktemp("gpu") / "onnx"
    export_onnx(default_model, out, validate=False, log=lambda _: None)
    return out


def test_cuda_provider_requested_but_missing_is_one_line(export):
    import onnxruntime

    from lga_export.runtime.registry import open_runner

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this ONNX Runtime has the CUDA provider")
    with pytest.raises(LGAError, match=r"CUDAExecutionProvider.*not available.*pip uninstall onnxruntime"):
        open_runner("ort", export, device="cuda")


def test_cuda_provider_listed_but_shadowed_is_refused(export, monkeypatch):
    """onnxruntime-gpu beside CPU onnxruntime lists CUDA but runs on the CPU: refused, not mislabelled."""
    import onnxruntime

    from lga_export.runtime.registry import open_runner

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("a real CUDA provider is present")
    listed = onnxruntime.get_available_providers() + ["CUDAExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: listed)
    real_session = onnxruntime.InferenceSession

    def session(path, options, providers):
        return real_session(path, options, providers=[p for p in providers if p != "CUDAExecutionProvider"])

    monkeypatch.setattr(onnxruntime, "InferenceSession", session)
    with pytest.raises(LGAError, match="runs without it"):
        open_runner("ort", export, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])


def test_latency_measure_records_device_times_only_with_a_stream():
    from lga_export.bench.timing import measure

    latency = measure(lambda: sum(range(1000)), lambda: None, batch=1, warmup=1, iters=3)
    assert latency.device_ms is None and len(latency.times_ms) == 3


@pytest.mark.gpu
def test_fp32_reference_on_cuda_turns_tf32_off(default_model):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from lga_export.runtime.registry import open_runner

    torch.backends.cuda.matmul.allow_tf32 = True
    with open_runner("torch", default_model, device="cuda") as runner:
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert runner.timing_stream() is not None
