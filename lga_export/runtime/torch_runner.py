"""PyTorch backend: the reference (FP32 eager), autocast FP16/BF16, and torch.compile.

torch is imported when a runner is made, not with this module: the registry reads every
runner class's declarations, and an ONNX Runtime or OpenVINO run never loads torch.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lga_export.errors import LGAError
from lga_export.runtime.base import CHECKPOINT, Runner, RunnerDescription
from lga_export.runtime.device_timing import EnqueueTimer

if TYPE_CHECKING:
    import torch


class TorchRunner(Runner):
    """Runs the model's graphs through the same wrappers that are exported."""

    backend = "torch"
    aliases = ("pytorch",)
    precisions = ("fp32", "fp16", "bf16")
    sources = (CHECKPOINT,)
    compile = False

    def __init__(self, model: torch.nn.Module, precision: str = "fp32", device: str | torch.device = "cpu") -> None:
        import torch

        super().__init__(model.config, precision)
        self.model = model
        self.device = torch.device(device)
        self.graphs: dict[str, torch.nn.Module] = {}
        self._timer = EnqueueTimer()

    @classmethod
    def from_source(cls, source: Any, *, precision: str = "fp32", device: str = "cpu",
                    model_digest: str | None = None, **options: Any) -> "TorchRunner":
        """A model, an LGA checkpoint path, or None (the embedded default model)."""
        import torch

        if str(device).startswith("cuda") and not torch.cuda.is_available():
            raise LGAError(f"--device {device}: torch sees no CUDA GPU here; use --device cpu")
        if isinstance(source, torch.nn.Module):
            return cls(source, precision, device, **options)
        if source is not None and Path(source).is_dir():
            raise LGAError(f"{source}: PyTorch runs a checkpoint (.safetensors), not a folder; "
                           f"use --backend ort for an export folder or trt for an engine folder")
        from lga_export.loading import load_model

        return cls(load_model(checkpoint=source), precision, device, **options)

    @classmethod
    def unavailable(cls, precision: str, device: str) -> str | None:
        try:
            import torch
        except ImportError as exc:
            return f"PyTorch is not installed ({exc}); pip install \"lga-export[export]\""
        if device.startswith("cuda") and not torch.cuda.is_available():
            return "torch sees no CUDA GPU here"
        if precision == "bf16" and device.startswith("cuda") and not torch.cuda.is_bf16_supported():
            return "this GPU has no BF16 support"
        return None

    @classmethod
    def verify_source(cls, source: Any, precision: str, device: str) -> None:
        """A checkpoint's header only (its weights load in the workers); a precision this backend runs."""
        if precision not in cls.precisions:
            raise LGAError(f"backend {cls.backend} runs {', '.join(cls.precisions)}, not {precision}")
        if source is None:
            return
        if Path(source).is_dir():
            cls.from_source(source, precision=precision, device=device)  # refuses a folder in one line
        from lga_export.checkpoint import load_lga_config

        load_lga_config(source)

    def activate_impl(self) -> None:
        import torch

        from lga_export.modeling.graphs import graph_modules

        if self.device.type == "cuda" and self.precision == "fp32":
            # The FP32 reference is FP32: TF32 matmuls/convolutions (PyTorch's default for cuDNN)
            # would make it differ from FP32 engines, which are built with TF32 off.
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        self.model.to(self.device).eval()
        graphs = graph_modules(self.model)
        self.graphs = {k: torch.compile(v) if self.compile else v for k, v in graphs.items()}

    def deactivate_impl(self) -> None:
        self.graphs = {}

    @property
    def model_digest(self) -> str:
        if self._model_digest is None:
            from lga_export.checkpoint import model_digest

            self._model_digest = model_digest(self.model)
        return self._model_digest

    def tokenizer(self):
        from lga_export.modeling.text_encoder import load_text_tokenizer

        return load_text_tokenizer(self.config.text_model)

    def _autocast(self) -> contextlib.AbstractContextManager:
        import torch

        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16}
        return torch.autocast(device_type=self.device.type, dtype=dtypes[self.precision])

    def infer_impl(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        spec = self.specs[graph]
        args = [torch.from_numpy(np.ascontiguousarray(feeds[name])).to(self.device) for name in spec.input_names]
        with torch.inference_mode(), self._autocast(), self._timer.around(self.timing_stream()):
            output = self.graphs[graph](*args)  # the only work between the events (inputs already copied)
        return {spec.output: output.float().cpu().numpy()}

    def timing_stream(self):
        """The CUDA stream the graphs run on (for CUDA-event timings), None on the CPU."""
        import torch

        return torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None

    def last_device_ms(self) -> float | None:
        return self._timer.last_ms()

    def synchronize(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def describe(self) -> dict[str, Any]:
        import torch

        info = super().describe()
        info.update(device=str(self.device), threads=torch.get_num_threads(), torch=torch.__version__,
                    compiled=self.compile)
        if self.device.type == "cuda":
            info["gpu"] = torch.cuda.get_device_name(self.device)
        return info

    def description(self) -> RunnerDescription:
        import torch

        where = [f"torch-{'compile' if self.compile else 'eager'}:{self.device}"]
        return self.with_self_check(RunnerDescription(self.backend, self.precision, self.precision, str(self.device),
                                                      on_cpu=self.device.type == "cpu",
                                                      providers={g: where for g in self.specs},
                                                      threads=torch.get_num_threads()))


class CompiledTorchRunner(TorchRunner):
    """The same graphs through torch.compile (default inductor backend)."""

    backend = "torch-compile"
    aliases = ()  # pytorch is the eager runner's
    compile = True
