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
def export(tmp_path_factory, copy_of_plain_export):
    return copy_of_plain_export(tmp_path_factory.mktemp("gpu") / "onnx")


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
    with pytest.raises(LGAError, match="runs without it") as info:
        open_runner("ort", export, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert "\n" not in str(info.value)


def test_latency_measure_records_device_times_only_with_a_stream():
    """A runner with a timing stream reports each iteration's device time (read after it, warm-up
    excluded): they are summarised as device_ms; without one (None) there is no device_ms."""
    from lga_export.bench.timing import measure

    latency = measure(lambda: sum(range(1000)), lambda: None, batch=1, warmup=1, iters=3)
    assert latency.device_ms is None and len(latency.times_ms) == 3
    assert measure(lambda: None, lambda: None, batch=1, warmup=1, iters=3, device_time=lambda: None).device_ms is None
    reported = iter([2.0, 4.0, 9.0])
    timed = measure(lambda: None, lambda: None, batch=2, warmup=1, iters=3, device_time=lambda: next(reported))
    assert timed.device_ms["times_ms"] == [2.0, 4.0, 9.0] and timed.device_ms["p50_ms"] == 4.0
    assert timed.device_ms["mean_ms"] == 5.0 and timed.device_ms["throughput"] == 400.0  # 2 images / 5 ms


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


# ---------------------------------------------------------------- #22: device times, CUDA provider options

class _FakeEvent:
    """Stands in for torch.cuda.Event: logs where it is recorded; 1.5 ms between any two."""

    log: list = []

    def __init__(self, enable_timing: bool = False) -> None:
        assert enable_timing

    def record(self, stream=None) -> None:
        self.log.append(("event", stream))

    def synchronize(self) -> None:
        pass

    def elapsed_time(self, end) -> float:
        return 1.5


def test_device_ms_is_what_the_runner_recorded_not_the_host_time():
    """#22 bug 2: the bench's device_ms is the runner's own figure, read after each iteration; the
    host work of the call (here 20 ms of sleep) is not in it."""
    import time

    from lga_export.bench.timing import measure

    latency = measure(lambda: time.sleep(0.02), lambda: None, batch=1, warmup=0, iters=3, device_time=lambda: 1.0)
    assert latency.p50_ms >= 20 and latency.device_ms["p50_ms"] == 1.0 and len(latency.device_ms["times_ms"]) == 3


def test_torch_runner_records_events_around_the_graph_only(default_model, monkeypatch):
    """#22 bug 2, fake-backed (CUDA events and the stream are stand-ins; the graph runs on the CPU):
    the events bracket the graph call alone - the feed check and both copies fall outside them."""
    import numpy as np
    import torch

    from lga_export.contract import IMAGE_GRAPH, dummy_inputs, graph_specs
    from lga_export.runtime.torch_runner import TorchRunner

    log: list = []
    monkeypatch.setattr(_FakeEvent, "log", log)
    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    monkeypatch.setattr(TorchRunner, "timing_stream", lambda self: "stream-0")
    with TorchRunner(default_model) as runner:
        graph = runner.graphs[IMAGE_GRAPH]
        runner.graphs[IMAGE_GRAPH] = lambda *args: log.append("graph") or graph(*args)
        feeds = dummy_inputs(graph_specs(default_model.config)[1], {"batch": 1, "sequence": 16})
        assert runner.last_device_ms() is None
        out = runner.infer(IMAGE_GRAPH, feeds)
    assert log == [("event", "stream-0"), "graph", ("event", "stream-0")]
    assert runner.last_device_ms() == 1.5 and all(isinstance(v, np.ndarray) for v in out.values())


def test_cpu_runners_report_no_device_time(default_model):
    from lga_export.runtime.torch_runner import TorchRunner

    assert TorchRunner(default_model).last_device_ms() is None


def test_cuda_provider_is_loaded_with_explicit_options(export, monkeypatch):
    """#22 bug 5, fake-backed (ONNX Runtime is told it has a working CUDA provider; the sessions run
    on the CPU): the CUDA provider gets device_id from cuda:N and use_tf32 0, never its bare name."""
    import onnxruntime

    from lga_export.runtime.ort_runner import default_providers
    from lga_export.runtime.registry import open_runner

    seen: list = []
    real_session = onnxruntime.InferenceSession

    class Session:
        def __init__(self, path, options=None, providers=None):
            seen.append(providers)
            self._real = real_session(path, options, providers=["CPUExecutionProvider"])

        def get_providers(self):
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]

        def __getattr__(self, name):
            return getattr(self._real, name)

    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(onnxruntime, "InferenceSession", Session)
    cuda = ("CUDAExecutionProvider", {"device_id": "1", "use_tf32": "0"})
    assert default_providers("cuda:1") == [cuda, "CPUExecutionProvider"]
    for providers in (None, ["CUDAExecutionProvider", "CPUExecutionProvider"]):  # the default, and bare names
        seen.clear()
        with open_runner("ort", export, device="cuda:1", providers=providers) as runner:
            assert runner.describe()["provider_options"] == {"CUDAExecutionProvider": cuda[1]}
        assert seen and all(p == [cuda, "CPUExecutionProvider"] for p in seen[1:]), seen


def test_listed_but_unloadable_cuda_provider_is_one_line(export, monkeypatch):
    """#22 bug 5 / risk: onnxruntime-gpu without its CUDA libraries lists the provider, then runs on
    the CPU. Fake-backed (the provider is listed by a stand-in). The runner and lga-bench say so in
    one line before any case runs, instead of one skipped case per ort precision."""
    import onnxruntime

    from lga_export.bench.core import BenchSettings, check_ort_providers
    from lga_export.runtime.ort_runner import default_providers
    from lga_export.runtime.registry import open_runner

    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    real_session = onnxruntime.InferenceSession
    monkeypatch.setattr(onnxruntime, "InferenceSession", lambda path, options=None, providers=None: real_session(
        path, options, providers=[p for p in providers if p == "CPUExecutionProvider"]))
    with pytest.raises(LGAError, match="lists CUDAExecutionProvider but cannot load it") as info:
        open_runner("ort", export, device="cuda")
    assert "\n" not in str(info.value)
    settings = BenchSettings(backends=["ort"], ort_providers=default_providers("cuda"))
    with pytest.raises(LGAError, match="lists CUDAExecutionProvider but cannot load it"):
        check_ort_providers(settings)
    check_ort_providers(BenchSettings(backends=["torch"], ort_providers=default_providers("cuda")))  # no ort: fine


def test_device_memory_is_a_peak_above_the_case_baseline(monkeypatch):
    """#22 bug 3, fake-backed (torch.cuda's memory calls are stand-ins): the baseline is taken after
    emptying PyTorch's cache, the driver figure is the highest snapshot above it, not the last one."""
    import torch

    from lga_export.bench.machine import DeviceMemory, release_device_memory

    total, used = 100 << 20, iter([40 << 20, 70 << 20, 55 << 20, 50 << 20])
    calls: list[str] = []
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (total - next(used), total))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: calls.append("synchronize"))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a: calls.append("reset"))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a: 8 << 20)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: 20 << 20)
    memory = DeviceMemory()
    assert calls == ["synchronize", "empty_cache", "reset"]
    memory.sample()  # 70 MiB in use: the peak
    memory.sample()
    figures = memory.result()  # a last snapshot at 50 MiB
    assert figures["driver_baseline_mb"] == 40 and figures["driver_peak_above_baseline_mb"] == 30
    assert figures["torch_allocator_peak_above_baseline_mb"] == 12

    class Model:
        device = "cuda"

        def to(self, device):
            self.device = device
            return self

    model = Model()
    release_device_memory(model)
    assert model.device == "cpu"


def test_gpu_cases_are_compared_with_a_gpu_peak():
    """#22 bug 6: a GPU case's GFLOP/s against the matmul peak of its precision measured on the GPU
    (no percentage for INT8 there), a CPU case against ONNX Runtime's CPU MatMul peak."""
    from lga_export.bench.core import _add_gflops
    from lga_export.runtime.base import RunnerDescription

    def case(precision, on_cpu):
        described = RunnerDescription(backend="any", precision=precision, precision_in_use=precision,
                                      device="cpu" if on_cpu else "cuda", on_cpu=on_cpu)
        return {"precision": precision, "description": described.to_dict(),
                "batches": {"1": {"latency": {"lga_image": {"p50_ms": 1.0}}}}}

    results = {"compute": {"image_graph_flops": {"flops": 10**9}, "matmul_peak": {"gflops_best": 100.0},
                           "gpu_matmul_peak": {"gflops_best": {"fp32": 50_000.0, "fp16": 800_000.0}}},
               "cases": {"torch-fp16": case("fp16", False), "trt-fp32": case("fp32", False),
                         "torch-int8-gpu": case("int8", False), "ort-int8": case("int8", True)}}
    _add_gflops(results)
    figures = {label: c["batches"]["1"] for label, c in results["cases"].items()}
    assert figures["torch-fp16"]["image_gflops"] == pytest.approx(1000.0)
    assert figures["torch-fp16"]["image_fraction_of_matmul_peak"] == pytest.approx(1000 / 800_000)
    assert figures["trt-fp32"]["image_fraction_of_matmul_peak"] == pytest.approx(1000 / 50_000)
    assert figures["torch-int8-gpu"]["image_fraction_of_matmul_peak"] is None
    assert figures["ort-int8"]["image_fraction_of_matmul_peak"] == pytest.approx(10.0)
    assert figures["ort-int8"]["matmul_peak_of"] == "cpu fp32" and figures["trt-fp32"]["matmul_peak_of"] == "gpu fp32"


def test_torch_matmul_peak_measures_every_precision():
    from lga_export.bench.compute import torch_matmul_peak

    peak = torch_matmul_peak("cpu", size=64, warmup=1, iters=2)
    assert set(peak["gflops_best"]) == {"fp32", "fp16", "bf16"} and all(v > 0 for v in peak["gflops_best"].values())
