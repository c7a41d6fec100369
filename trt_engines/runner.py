"""TensorRTRunner: the two LGA engines behind the common Runner interface.

Engines are refused when their manifest says they were built for another GPU, another
TensorRT version or from an ONNX file that has changed since. Device buffers are torch CUDA
tensors allocated once per input shape and reused; inputs outside the engine's profile are
refused with a one-line error before TensorRT sees them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lga_export.errors import LGAError
from lga_export.runtime.base import Runner
from lga_export.trt_engines.manifest import EngineFiles, check_compatible, read_manifest
from lga_export.trt_engines.profiles import Profile, Shape, check_shapes, profile_from_json

GRAPHS = ("text_encoder", "lga_image")


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
    """One deserialized engine, its context and the buffers of the shape it ran last."""

    def __init__(self, trt: Any, runtime: Any, files: EngineFiles, manifest: dict[str, Any]) -> None:
        self.graph = files.graph
        self.profile: Profile = profile_from_json(manifest["profile"])
        self.engine = runtime.deserialize_cuda_engine(files.engine.read_bytes())
        if self.engine is None:
            raise LGAError(f"{files.engine} does not deserialize; rebuild it with lga-export trt --force")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.inputs = [n for n in names if is_input[n]]
        self.outputs = [n for n in names if not is_input[n]]
        self.dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}
        self._buffers: dict[tuple[Shape, ...], dict[str, Any]] = {}
        self._shapes: tuple[Shape, ...] | None = None

    def buffers(self, shapes: dict[str, Shape]) -> dict[str, Any]:
        """Device tensors for these input shapes, allocated on first use and bound to the context."""
        import torch

        key = tuple(tuple(shapes[n]) for n in self.inputs)
        if key not in self._buffers:
            for name in self.inputs:
                self.context.set_input_shape(name, shapes[name])
            device = torch.device("cuda", torch.cuda.current_device())
            tensors = {n: torch.empty(tuple(shapes[n]), dtype=self.dtypes[n], device=device) for n in self.inputs}
            for name in self.outputs:
                shape = tuple(self.context.get_tensor_shape(name))
                tensors[name] = torch.empty(shape, dtype=self.dtypes[name], device=device)
            self._buffers[key] = tensors
        if self._shapes != key:
            for name in self.inputs:
                self.context.set_input_shape(name, shapes[name])
            for name, tensor in self._buffers[key].items():
                self.context.set_tensor_address(name, tensor.data_ptr())
            self._shapes = key
        return self._buffers[key]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        shapes = {name: tuple(np.shape(feeds[name])) for name in self.inputs if name in feeds}
        check_shapes(self.graph, self.profile, shapes)
        tensors = self.buffers(shapes)
        for name in self.inputs:
            tensors[name].copy_(torch.from_numpy(np.ascontiguousarray(feeds[name])).to(self.dtypes[name]))
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise LGAError(f"TensorRT failed to run the {self.graph} engine; see the TensorRT log above")
        return {name: tensors[name].float().cpu().numpy() for name in self.outputs}


class TensorRTRunner(Runner):
    """Runs `text_encoder` and `lga_image` engines built by `lga-export trt` from `engines_dir`.

    `onnx_dir`: the export folder to check the engines' source ONNX against (default: the one
    recorded at build time; the check is skipped when the ONNX file is no longer there).
    """

    backend = "trt"

    def __init__(self, engines_dir: str | Path, precision: str = "fp32", onnx_dir: str | Path | None = None) -> None:
        super().__init__(precision)
        self.engines_dir = Path(engines_dir)
        self.onnx_dir = Path(onnx_dir) if onnx_dir is not None else None
        self._engines: dict[str, _Engine] = {}
        self._environment: dict[str, Any] = {}

    def _current_digests(self, manifest: dict[str, Any]) -> dict[str, Any] | None:
        from lga_export.trt_engines.sources import onnx_digests

        source = manifest.get("source", {})
        folder = self.onnx_dir or (Path(source["onnx_dir"]) if source.get("onnx_dir") else None)
        path = folder / source.get("onnx_file", "") if folder else None
        return onnx_digests(path) if path is not None and path.is_file() else None

    def activate(self) -> None:
        """Check every manifest against this machine, then deserialize both engines."""
        from lga_export.trt_engines._trt import current_environment, import_tensorrt

        trt = import_tensorrt()
        self._environment = current_environment()
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        for graph in GRAPHS:
            files = EngineFiles(self.engines_dir, graph, self.precision)
            if not files.engine.is_file():
                raise LGAError(f"{files.engine} not found; build it with lga-export trt"
                               f"{' --fp16' if self.precision == 'fp16' else ''} --out {self.engines_dir}")
            manifest = read_manifest(files.manifest)
            check_compatible(manifest, self._environment, self._current_digests(manifest))
            self._engines[graph] = _Engine(trt, runtime, files, manifest)
        self.active = True

    def infer(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.active:
            raise LGAError("the TensorRT runner is not active; use it as a context manager or call activate()")
        if graph not in self._engines:
            raise LGAError(f"unknown graph {graph!r}; choose one of {', '.join(GRAPHS)}")
        return self._engines[graph].run(feeds)

    def deactivate(self) -> None:
        self._engines.clear()
        super().deactivate()

    def synchronize(self) -> None:
        import torch

        torch.cuda.synchronize()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **self._environment, "engines_dir": str(self.engines_dir)}
