"""The backend contract (issue #18): every registered backend, through what its class declares.

Parametrised over `registry.backend_names()`: each backend available here opens its declared
source, checks feeds against the spec, returns the spec's outputs, describes itself in typed
fields, and its name and aliases resolve the same in predict (`open_runner`), serve's and
`predict --ray`'s source check and lga-bench's planner. A backend that cannot run here is
skipped with the reason its class declares. A throwaway backend registered here runs through
predict, serve's request handler, `predict --ray`'s actor and lga-bench's planner with no
other file touched.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lga_export.bench.cases import Case, plan_cases
from lga_export.bench.core import BenchSettings, _runner_options
from lga_export.errors import LGAError
from lga_export.contract import BATCH, PRECISIONS, SEQUENCE, dummy_inputs, specs_by_name
from lga_export.runtime.base import CHECKPOINT, ENGINES, EXPORT, Runner, RunnerDescription
from lga_export.runtime.ort_runner import OnnxRuntimeRunner
from lga_export.runtime.registry import (backend_names, canonical_backend, open_runner, register, resolve,
                                         runner_class, unavailable, unregister)
from lga_export.serve.ray_cluster import check_source

SIZES = {BATCH: 2, SEQUENCE: 9}


@pytest.fixture(scope="module")
def ov_export(int8_export) -> Path:
    """The default model's export with FP32 graphs and an OpenVINO INT8 IR (`--int8 ov`)."""
    return int8_export("ov")[0]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LGA_EXPORT_CACHE", str(tmp_path / "cache"))


def source_for(cls: type[Runner], export: Path, model: Any) -> Any:
    """The source this backend declares it opens: the export folder or the in-memory model."""
    if EXPORT in cls.sources:
        return export
    if CHECKPOINT in cls.sources:
        return model
    pytest.skip(f"{cls.backend} opens {cls.sources}; the test has none of those")


def usable(name: str) -> type[Runner]:
    """The backend's class, or a skip with the reason the class itself declares."""
    reason = unavailable(name, "fp32", runner_class(name).default_device)
    if reason:
        pytest.skip(f"{name}: {reason}")
    return runner_class(name)


@pytest.mark.parametrize("name", backend_names())
def test_declarations_are_complete_and_consistent(name):
    cls = runner_class(name)
    assert cls.backend == name and canonical_backend(name.upper()) == name
    assert cls.precisions and set(cls.precisions) <= set(PRECISIONS)
    assert cls.sources and set(cls.sources) <= {EXPORT, ENGINES, CHECKPOINT}
    assert cls.default_device in ("cpu", "cuda")
    if cls.int8_format is not None:  # it runs an export's INT8 graph: it says which and how it is made
        assert "int8" in cls.precisions and cls.int8_graph and cls.int8_methods and EXPORT in cls.sources
    assert cls.thread_options(3) == ({cls.thread_option: 3} if cls.thread_option else {})
    assert cls.thread_options(None) == {}
    for alias in vars(cls).get("aliases", ()):
        assert canonical_backend(alias) == name and canonical_backend(f" {alias.upper()} ") == name


@pytest.mark.parametrize("name", backend_names())
def test_names_and_aliases_resolve_the_same_everywhere(name, ov_export, default_model):
    """predict's factory, serve's and predict --ray's source check, and lga-bench all pick `name`."""
    cls = usable(name)
    source = source_for(cls, ov_export, default_model)
    for spelling in (name, *vars(cls).get("aliases", ())):
        assert resolve(spelling, source).backend == name
        assert open_runner(spelling, source, activate=False).backend == name
        path = str(source) if isinstance(source, Path) else None  # Ray workers get a path, or None: embedded
        assert check_source(spelling, path, "fp32", None) == (name, cls.default_device)
        assert BenchSettings(backends=[spelling], precisions=["fp32"]).checked().backends == [name]


@pytest.mark.parametrize("name", backend_names())
def test_feeds_are_checked_before_the_backend_sees_them(name, ov_export, default_model):
    cls = usable(name)
    with open_runner(name, source_for(cls, ov_export, default_model)) as runner:
        for graph, spec in runner.specs.items():
            feeds = dummy_inputs(spec, SIZES)
            first = spec.input_names[0]
            with pytest.raises(LGAError, match="do not match the graph's inputs"):
                runner.infer(graph, {k: v for k, v in feeds.items() if k != first})
            wrong = {**feeds, first: feeds[first].astype(np.float64 if feeds[first].dtype != np.float64 else np.int32)}
            with pytest.raises(LGAError, match=f"{first} has dtype"):
                runner.infer(graph, wrong)
        with pytest.raises(LGAError, match="unknown graph"):
            runner.infer("no_such_graph", {})


@pytest.mark.parametrize("name", backend_names())
def test_outputs_have_the_spec_shapes_and_dtypes_and_the_description_its_fields(name, ov_export, default_model):
    cls = usable(name)
    if getattr(cls, "compile", False):
        pytest.skip("torch.compile takes minutes on this CPU; its eager twin (torch) runs the same contract")
    with open_runner(name, source_for(cls, ov_export, default_model)) as runner:
        for graph, spec in runner.specs.items():
            outputs = runner.infer(graph, dummy_inputs(spec, SIZES))
            assert list(outputs) == spec.output_names, graph
            for tensor in spec.outputs:
                value = outputs[tensor.name]
                assert value.shape == tensor.concrete(SIZES) and value.dtype == np.dtype(tensor.dtype), tensor.name
                assert np.isfinite(value).all(), tensor.name
        described = runner.description()
    assert isinstance(described, RunnerDescription)
    assert (described.backend, described.precision, described.precision_in_use) == (name, "fp32", "fp32")
    assert described.on_cpu and described.device.startswith("cpu") and described.fallback is None
    assert set(described.providers) == set(specs_by_name(runner.config)) and all(described.providers.values())
    assert RunnerDescription.from_dict(json.loads(json.dumps(described.to_dict()))) == described


def test_a_backend_that_cannot_run_here_is_skipped_with_its_declared_reason():
    for name in backend_names():
        cls = runner_class(name)
        reason = unavailable(name, "fp32", cls.default_device)
        planned, skipped = plan_cases([name], ["fp32"], cls.default_device, None, Path("engines"), [])
        if reason is not None and EXPORT not in cls.sources:
            assert {"backend": name, "precision": "fp32", "reason": reason} in skipped
    assert "no fp16 path" in unavailable("ov", "fp16", "cpu")


# --- `serve --backend openvino` and `--precision int8` on an `--int8 ov` export -------------------

def serve_settings(**fields: Any):
    pytest.importorskip("ray.serve", reason="ray[serve] is not installed (pip install \"lga-export[serve]\")")
    from lga_export.serve.app import Scaling, ServeSettings, resolve_settings

    return resolve_settings(ServeSettings(**fields), Scaling())


def replica(settings) -> Any:
    """One serve replica built in this process (the class under Serve's ingress wrapper)."""
    from lga_export.serve.app import LGADeployment

    cls = next(c for c in LGADeployment.func_or_class.__mro__ if "_run" in vars(c))
    return cls(dataclasses.asdict(settings))


def test_serve_and_predict_ray_take_openvino_and_int8_of_an_ov_export(ov_export):
    """Both failed before: 'unknown backend openvino', and int8 without --backend picked ort."""
    named = serve_settings(model=str(ov_export), backend="openvino", threads=2)
    assert (named.backend, named.device, named.threads) == ("ov", "cpu", 2)
    int8 = serve_settings(model=str(ov_export), precision="int8", threads=1)
    assert (int8.backend, int8.precision) == ("ov", "int8")
    assert check_source("openvino", str(ov_export), "fp32", None) == ("ov", "cpu")
    assert check_source(None, str(ov_export), "int8", None) == ("ov", "cpu")
    assert open_runner(None, ov_export, "int8", activate=False).backend == "ov"  # predict, the same rule
    with pytest.raises(LGAError, match="unknown backend 'onnx'"):
        check_source("onnx", str(ov_export), "fp32", None)


def test_serve_replicas_of_openvino_get_the_thread_count(ov_export):
    served = replica(serve_settings(model=str(ov_export), backend="openvino", threads=1, max_batch=1))
    try:
        assert served.runner.backend == "ov" and served.runner.threads == 1
        assert served.runner.description().threads == 1
        assert served.runner.compile_config()["INFERENCE_NUM_THREADS"] == 1
    finally:
        served.runner.deactivate()


# --- a throwaway backend: one class, registered, nothing else touched ----------------------------

class WrappedOrt(Runner):
    """ONNX Runtime behind a class of its own: every declaration is its own, not inherited."""

    backend = "wrapped"
    aliases = ("wrapped-ort",)
    precisions = ("fp32",)
    sources = (EXPORT,)
    thread_option = "threads"
    calls: list[str] = []

    def __init__(self, inner: OnnxRuntimeRunner, threads: int | None) -> None:
        super().__init__(inner.config, inner.precision)
        self.inner, self.threads = inner, threads
        self.tokenizer_dir, self._model_digest = inner.tokenizer_dir, inner.model_digest

    @classmethod
    def from_source(cls, source: Any, *, precision: str = "fp32", device: str = "cpu",
                    model_digest: str | None = None, threads: int | None = None, **options: Any) -> "WrappedOrt":
        inner = OnnxRuntimeRunner.from_source(source, precision=precision, device=device, model_digest=model_digest,
                                              threads=threads)
        return cls(inner, threads)

    def activate_impl(self) -> None:
        self.inner.activate()

    def deactivate_impl(self) -> None:
        self.inner.deactivate()

    def infer_impl(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        WrappedOrt.calls.append(graph)
        return self.inner.infer_impl(graph, feeds)

    def description(self) -> RunnerDescription:
        return RunnerDescription(self.backend, self.precision, self.precision, "cpu", on_cpu=True,
                                 providers=self.inner.providers_in_use(), threads=self.threads)


@pytest.fixture
def wrapped():
    name = register(WrappedOrt)
    WrappedOrt.calls.clear()
    yield name
    unregister(name)


@pytest.fixture(scope="module")
def ort_masks(ov_export, image_folder, tmp_path_factory) -> dict[str, bytes]:
    from lga_export.predict import predict_files

    images, table = image_folder
    written = predict_files(ov_export, images=images, text_file=table, out=tmp_path_factory.mktemp("ort"),
                            backend="ort")
    return {p.name: p.read_bytes() for p in written if p.name.endswith("_mask.png")}


def test_throwaway_backend_runs_through_predict(wrapped, ov_export, image_folder, ort_masks, tmp_path):
    from lga_export.predict import predict_files

    images, table = image_folder
    written = predict_files(ov_export, images=images, text_file=table, out=tmp_path, backend="wrapped-ort")
    assert {p.name: p.read_bytes() for p in written if p.name.endswith("_mask.png")} == ort_masks
    assert WrappedOrt.calls  # it ran, not ONNX Runtime's own runner
    assert open_runner("WRAPPED-ORT", ov_export, activate=False).backend == wrapped


def test_throwaway_backend_runs_through_serve_request_handler(wrapped, ov_export, image_folder, ort_masks):
    from starlette.requests import Request

    from lga_export.predict import collect_jobs
    from lga_export.serve.client import multipart

    settings = serve_settings(model=str(ov_export), backend="wrapped-ort", threads=2, max_batch=1)
    assert settings.backend == wrapped
    served = replica(settings)
    assert isinstance(served.runner, WrappedOrt) and served.runner.threads == 2  # the thread count reached it
    path, report = collect_jobs(None, None, *image_folder)[0]
    body, content_type = multipart({"text": report}, {"image": (path.name, path.read_bytes())})
    scope = {"type": "http", "method": "POST", "path": "/v1/segment", "headers": [
        (b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        answer = asyncio.run(served.segment(Request(scope, receive)))
    finally:
        served.runner.deactivate()
    payload = json.loads(answer.body)
    assert answer.status_code == 200, payload
    assert payload["backend"] == wrapped
    assert base64.b64decode(payload["mask_png"]) == ort_masks[f"{path.stem}_mask.png"]


def test_throwaway_backend_runs_through_predict_ray_planning_and_actor(wrapped, ov_export, image_folder, ort_masks):
    from lga_export.predict import collect_jobs
    from lga_export.imageio import read_image
    from lga_export.runtime.registry import thread_options
    from lga_export.serve.ray_predict import ChunkSegmenter

    backend, device = check_source("wrapped-ort", str(ov_export), "fp32", None)
    assert (backend, device) == (wrapped, "cpu") and thread_options(backend, 1) == {"threads": 1}
    actor = ChunkSegmenter(backend, str(ov_export), "fp32", device, 0.0, thread_options(backend, 1))
    jobs = collect_jobs(None, None, *image_folder)
    chunk = pickle.dumps(([0, 1], [read_image(p) for p, _ in jobs[:2]], [t for _, t in jobs[:2]]))
    rows = actor({"chunk": np.array([chunk], dtype=object)})
    assert actor.runner.threads == 1 and WrappedOrt.calls
    for index, png in zip(rows["index"], rows["mask_png"]):
        assert bytes(png) == ort_masks[f"{jobs[int(index)][0].stem}_mask.png"]


def test_throwaway_backend_runs_through_the_bench_planner(wrapped, ov_export, default_model):
    from lga_export.artifact import open_export

    settings = BenchSettings(backends=["wrapped-ort", "ort"], precisions=["fp32", "int8"], threads=2).checked()
    assert settings.backends == [wrapped, "ort"]
    artifact = open_export(ov_export)
    runnable, skipped = plan_cases(settings.backends, settings.precisions, "cpu", artifact, None, [])
    assert Case(wrapped, "fp32") in runnable
    reasons = {(s["backend"], s["precision"]): s["reason"] for s in skipped}
    assert "no int8 path" in reasons[(wrapped, "int8")]
    assert "ov-int8 runs it" in reasons[("ort", "int8")]  # the export's INT8 graph is OpenVINO's
    source, options = _runner_options(Case(wrapped, "fp32"), default_model, artifact, settings, None)
    assert source is artifact and options == {"threads": 2}
    with open_runner(wrapped, source, "fp32", "cpu", **options) as runner:
        assert runner.description().backend == wrapped and runner.threads == 2


def test_bench_settings_default_backends_are_the_cli_default():
    """The library default left ov out while `lga-bench` ran it by default."""
    import inspect

    from lga_export.cli.bench import bench

    cli_default = inspect.signature(bench).parameters["backends"].default.default
    assert BenchSettings().backends == cli_default.split(",")
    assert set(BenchSettings().checked().backends) == set(backend_names())
