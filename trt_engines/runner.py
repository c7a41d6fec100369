"""TensorRTRunner: the two LGA engines of an engine folder behind the common Runner interface.

Opening (`from_source`) verifies every engine with `lga_export.artifact.open_engine` (sha256
of each listed file, paths inside the folder, model digest) and, when an export folder is
given, that each engine was built from that export's ONNX. Activation then refuses engines
built for another GPU, compute capability or TensorRT version, deserializes them and creates
the runner's own CUDA stream: host-to-device copies, `execute_async_v3` and device-to-host
copies are all queued on it, and `synchronize()` waits for it. Device buffers are torch CUDA
tensors allocated once per input shape and reused; inputs outside an engine's profile are
refused with a one-line error before TensorRT sees them.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np

from lga_export.artifact import REBUILD, TOKENIZER_DIR, EngineArtifact, engine_manifest_path, manifest_config
from lga_export.config import LGAConfig
from lga_export.errors import LGAError
from lga_export.contract import GRAPHS
from lga_export.runtime.base import ENGINES, Runner, RunnerDescription
from lga_export.runtime.device_timing import EnqueueTimer
from lga_export.trt_engines.manifest import check_compatible, engine_label, verified_engine
from lga_export.trt_engines.profiles import Profile, Shape, check_shapes, profile_from_json


def _torch_dtype(trt: Any, dtype: Any) -> Any:
    import torch

    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
             trt.int8: torch.int8, trt.bool: torch.bool}
    for name, torch_dtype in (("int64", torch.int64), ("bfloat16", torch.bfloat16), ("uint8", torch.uint8)):
        if hasattr(trt, name):
            table[getattr(trt, name)] = torch_dtype
    if dtype not in table:
        raise LGAError(f"engine tensor type {dtype} is not supported by the TensorRT runner")
    return table[dtype]


class _Engine:
    """One deserialized engine: its execution context and the device buffers of the shape it ran last.

    `device` is where buffers live (a CUDA device); `run` queues everything on the stream it is given.
    """

    def __init__(self, graph: str, engine: Any, context: Any, profile: Profile, inputs: list[str],
                 outputs: list[str], dtypes: dict[str, Any], device: Any) -> None:
        self.graph = graph
        self.engine = engine
        self.context = context
        self.profile = profile
        self.inputs = inputs
        self.outputs = outputs
        self.dtypes = dtypes
        self.device = device
        self._buffers: dict[tuple[Shape, ...], dict[str, Any]] = {}
        self._bound: tuple[Shape, ...] | None = None
        self.timer: EnqueueTimer | None = None  # set by the runner: CUDA events around execute_async_v3

    @classmethod
    def load(cls, trt: Any, runtime: Any, artifact: EngineArtifact, device: Any) -> "_Engine":
        engine = runtime.deserialize_cuda_engine(artifact.engine.read_bytes())
        if engine is None:
            raise LGAError(f"{artifact.engine} does not deserialize (see the TensorRT log above); {REBUILD}")
        context = engine.create_execution_context()
        if context is None:
            raise LGAError(f"TensorRT could not create an execution context for {artifact.engine} "
                           f"(out of GPU memory?); see the TensorRT log above")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        dtypes = {n: _torch_dtype(trt, engine.get_tensor_dtype(n)) for n in names}
        return cls(artifact.manifest["graph"], engine, context, profile_from_json(artifact.manifest["profile"]),
                   [n for n in names if is_input[n]], [n for n in names if not is_input[n]], dtypes, device)

    def _set_shape(self, name: str, shape: Shape) -> None:
        if not self.context.set_input_shape(name, tuple(shape)):
            raise LGAError(f"{self.graph}: TensorRT refused input {name} with shape {tuple(shape)} "
                           f"(set_input_shape returned False); see the TensorRT log above")

    def _bind(self, name: str, tensor: Any) -> None:
        if not self.context.set_tensor_address(name, tensor.data_ptr()):
            raise LGAError(f"{self.graph}: TensorRT refused the buffer of {name} with shape {tuple(tensor.shape)} "
                           f"(set_tensor_address returned False); see the TensorRT log above")

    def buffers(self, shapes: dict[str, Shape]) -> dict[str, Any]:
        """Device tensors for these input shapes, allocated on first use and bound to the context.
        Called inside the runner's stream context, so the allocations belong to that stream."""
        import torch

        key = tuple(tuple(shapes[n]) for n in self.inputs)
        if key not in self._buffers:
            for name in self.inputs:
                self._set_shape(name, shapes[name])
            tensors = {n: torch.empty(tuple(shapes[n]), dtype=self.dtypes[n], device=self.device) for n in self.inputs}
            for name in self.outputs:
                shape = tuple(self.context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise LGAError(f"{self.graph}: TensorRT left output {name} with unresolved shape {shape} "
                                   f"for inputs {dict(shapes)}")
                tensors[name] = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
            self._buffers[key] = tensors
            self._bound = None
        if self._bound != key:
            for name in self.inputs:
                self._set_shape(name, shapes[name])
            for name, tensor in self._buffers[key].items():
                self._bind(name, tensor)
            self._bound = key
        return self._buffers[key]

    def close(self) -> None:
        """Free in TensorRT's order: buffers and execution context before the engine."""
        self._buffers.clear()
        self._bound = None
        self.context = None
        self.engine = None

    def run(self, feeds: dict[str, np.ndarray], stream: Any) -> dict[str, np.ndarray]:
        """Copy the feeds in, execute and copy the outputs back, all queued on `stream`; the
        final device-to-host copies wait for that stream, so the outputs are complete."""
        import torch

        shapes = {name: tuple(np.shape(feeds[name])) for name in self.inputs if name in feeds}
        check_shapes(self.graph, self.profile, shapes)
        with torch.cuda.stream(stream):
            tensors = self.buffers(shapes)
            for name in self.inputs:
                host = torch.from_numpy(np.ascontiguousarray(feeds[name]))
                tensors[name].copy_(host.to(self.dtypes[name]))
            with self.timer.around(stream) if self.timer else contextlib.nullcontext():
                queued = self.context.execute_async_v3(stream.cuda_stream)
            if not queued:
                raise LGAError(f"TensorRT failed to run the {self.graph} engine; see the TensorRT log above")
            return {name: tensors[name].float().cpu().numpy() for name in self.outputs}


class TensorRTRunner(Runner):
    """Runs the `text_encoder` and `lga_image` engines that `lga-export trt` wrote to `engines_dir`.

    `artifacts`: graph name -> verified EngineArtifact (from `from_source`).
    """

    backend = "trt"
    aliases = ("tensorrt",)
    precisions = ("fp32", "fp16")
    default_device = "cuda"
    sources = (ENGINES,)
    self_checked = ("fp16",)  # checked against the folder's FP32 engines on first use per GPU (self_check.py)

    @classmethod
    def unavailable(cls, precision: str, device: str) -> str | None:
        """No TensorRT, or no CUDA GPU, on this machine."""
        try:
            import tensorrt  # noqa: F401
        except Exception as exc:  # noqa: BLE001 - ImportError or a broken install: both mean "not here"
            return f"TensorRT is not importable ({type(exc).__name__}: {exc}); pip install \"lga-export[tensorrt]\""
        import torch

        if not torch.cuda.is_available():
            return "TensorRT needs a CUDA GPU and torch sees none"
        return None

    @classmethod
    def options_for(cls, precision: str, *, threads: int | None = None, providers: list[str] | None = None,
                    onnx_dir: Path | None = None) -> dict[str, Any]:
        """The export folder to check the engines' source ONNX against."""
        return {"onnx_dir": onnx_dir}

    def __init__(self, config: LGAConfig, engines_dir: str | Path, artifacts: dict[str, EngineArtifact],
                 precision: str = "fp32", *, device: str = "cuda", onnx_dir: str | Path | None = None) -> None:
        super().__init__(config, precision)
        self.engines_dir = Path(engines_dir)
        self.artifacts = dict(artifacts)
        self.device_name = device
        self.onnx_dir = Path(onnx_dir) if onnx_dir is not None else None
        self._engines: dict[str, _Engine] = {}
        self._environment: dict[str, Any] = {}
        self._stream: Any = None
        self._runtime: Any = None  # outlives the engines it deserialized
        self._timer = EnqueueTimer()

    @classmethod
    def from_source(cls, source: Any, *, precision: str = "fp32", device: str = "cuda",
                    model_digest: str | None = None, onnx_dir: str | Path | None = None,
                    **options: Any) -> "TensorRTRunner":
        """An engine folder written by `lga-export trt`, verified before anything is loaded.

        `onnx_dir`: the export folder to check the engines' source ONNX against (opened with
        `open_export`, so it is verified too); without it no export is looked for.
        `model_digest`: refuse engines (and an export) of another model.
        """
        from lga_export.artifact import open_export

        if options:
            raise LGAError(f"the TensorRT runner takes no options {sorted(options)}")
        if not (isinstance(source, (str, Path)) and Path(source).is_dir()):
            raise LGAError("TensorRT runs an engine folder; build one with lga-export trt --onnx EXPORT --out "
                           "FOLDER and pass the folder")
        if precision not in cls.precisions:
            raise LGAError(f"backend {cls.backend} runs {', '.join(cls.precisions)}, not {precision}")
        if not str(device).startswith("cuda"):
            raise LGAError(f"TensorRT engines run on a CUDA GPU, not on {device!r}; pass device cuda")
        folder = Path(source)
        export = open_export(onnx_dir, model_digest) if onnx_dir is not None else None
        artifacts = {graph: verified_engine(folder, graph, precision, model_digest=model_digest, export=export)
                     for graph in GRAPHS}
        digests = {a.manifest.get("model_digest") for a in artifacts.values()}
        if len(digests) != 1:
            raise LGAError(f"{folder}: its {precision} engines belong to different models; {REBUILD}")
        first = next(iter(artifacts.values()))
        config = manifest_config(first.manifest, folder, REBUILD)
        runner = cls(config, folder, artifacts, precision, device=device, onnx_dir=onnx_dir)
        if export is not None:  # the export's own check sample, verified with it
            runner.take_check_sample(export)
        else:  # the copy the engine folder carries, verified with the engine
            runner.take_check_sample(first, engine_manifest_path(folder, first.manifest["graph"], precision).name,
                                     REBUILD)
        return runner

    @property
    def model_digest(self) -> str | None:
        return next(iter(self.artifacts.values())).manifest.get("model_digest") if self.artifacts else None

    def self_check_identity(self) -> dict[str, Any] | None:
        """The engines' sha256 (and the FP32 reference engines' manifests), TensorRT's version, the GPU
        and its compute capability."""
        import hashlib

        import torch

        from lga_export.trt_engines._trt import current_environment

        index = torch.device(self.device_name).index
        environment = self._environment or current_environment(index)
        engines = {graph: a.manifest.get("files", {}).get(a.engine.relative_to(self.engines_dir).as_posix())
                   for graph, a in sorted(self.artifacts.items())}
        reference = {}
        for graph in sorted(self.artifacts):
            path = engine_manifest_path(self.engines_dir, graph, "fp32")
            reference[graph] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        return {"model_digest": self.model_digest, "graphs": engines, "reference_graphs": reference,
                "runtime": f"tensorrt {environment.get('tensorrt_version')}",
                "host": {"gpu": environment.get("gpu_name"), "compute_capability": environment.get("compute_capability")}}

    def self_check_root(self) -> Path | None:
        """The per-user TensorRT cache folder (engines live in the user's engine folder, which stays as built)."""
        from lga_export.runtime.host import cache_root, ensure_cache_dir

        return ensure_cache_dir(cache_root("tensorrt"))

    def activate_impl(self) -> None:
        """Check every engine against this machine, deserialize both, create the CUDA stream."""
        import torch

        from lga_export.trt_engines._trt import current_environment, require_tensorrt_and_gpu

        trt = require_tensorrt_and_gpu()
        device = torch.device(self.device_name)
        index = device.index if device.index is not None else torch.cuda.current_device()
        device = torch.device("cuda", index)
        self._environment = current_environment(index)
        for artifact in self.artifacts.values():
            check_compatible(artifact.manifest, self._environment)
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        try:
            with torch.cuda.device(device):
                self._stream = torch.cuda.Stream(device=device)
                for graph, artifact in self.artifacts.items():
                    self._engines[graph] = _Engine.load(trt, self._runtime, artifact, device)
                    self._engines[graph].timer = self._timer
        except BaseException:
            self.deactivate_impl()
            raise

    def infer_impl(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._engines[graph].run(feeds, self._stream)

    def deactivate_impl(self) -> None:
        if self._stream is not None:
            self._stream.synchronize()
        for engine in self._engines.values():
            engine.close()
        self._engines.clear()
        self._stream = None
        self._runtime = None

    def tokenizer(self):
        """The tokenizer the build copied into the engine folder (listed in every engine manifest)."""
        from lga_export.tokenization import TextTokenizer

        folder = self.engines_dir / TOKENIZER_DIR
        if not folder.is_dir():
            raise LGAError(f"{self.engines_dir} has no {TOKENIZER_DIR}/ folder (engines built by an older "
                           f"lga-export?); {REBUILD}")
        return TextTokenizer.from_folder(folder)

    def timing_stream(self) -> Any:
        """The runner's own CUDA stream, for CUDA-event timings of the engines."""
        return self._stream

    def last_device_ms(self) -> float | None:
        """Device time of the last engine run: CUDA events around `execute_async_v3` only."""
        return self._timer.last_ms()

    def synchronize(self) -> None:
        """Wait for the work queued on this runner's stream (latency timers call it)."""
        if self._stream is not None:
            self._stream.synchronize()

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(self._environment)
        info.update(engines_dir=str(self.engines_dir), device=self.device_name, model_digest=self.model_digest,
                    engines={graph: engine_label(a.manifest) for graph, a in self.artifacts.items()},
                    onnx_dir=str(self.onnx_dir) if self.onnx_dir else None)
        return info

    def description(self) -> RunnerDescription:
        return self.with_self_check(RunnerDescription(self.backend, self.precision, self.precision, self.device_name,
                                                      on_cpu=False,
                                                      providers={graph: ["TensorRT"] for graph in self.artifacts}))
