"""PyTorch backend: the reference (FP32 eager), autocast FP16/BF16, and torch.compile."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lga_export.errors import LGAError
from lga_export.runtime.base import Runner

_AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16}


class TorchRunner(Runner):
    """Runs the model's graphs through the same wrappers that are exported."""

    backend = "torch"
    precisions = ("fp32", "fp16", "bf16")
    compile = False

    def __init__(self, model: torch.nn.Module, precision: str = "fp32", device: str | torch.device = "cpu") -> None:
        super().__init__(model.config, precision)
        self.model = model
        self.device = torch.device(device)
        self.graphs: dict[str, torch.nn.Module] = {}

    @classmethod
    def from_source(cls, source: Any, *, precision: str = "fp32", device: str = "cpu",
                    model_digest: str | None = None, **options: Any) -> "TorchRunner":
        """A model, an LGA checkpoint path, or None (the embedded default model)."""
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            raise LGAError(f"--device {device}: torch sees no CUDA GPU here; use --device cpu")
        if isinstance(source, torch.nn.Module):
            return cls(source, precision, device, **options)
        if source is not None and Path(source).is_dir():
            raise LGAError(f"{source}: PyTorch runs a checkpoint (.safetensors), not a folder; "
                           f"use --backend ort for an export folder or trt for an engine folder")
        from lga_export.loading import load_model

        return cls(load_model(checkpoint=source), precision, device, **options)

    def activate_impl(self) -> None:
        from lga_export.export.wrappers import graph_modules

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
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=_AUTOCAST[self.precision])

    def infer_impl(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        spec = self.specs[graph]
        args = [torch.from_numpy(np.ascontiguousarray(feeds[name])).to(self.device) for name in spec.input_names]
        with torch.inference_mode(), self._autocast():
            output = self.graphs[graph](*args)
        return {spec.output: output.float().cpu().numpy()}

    def timing_stream(self):
        """The CUDA stream the graphs run on (for CUDA-event timings), None on the CPU."""
        return torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(device=str(self.device), threads=torch.get_num_threads(), torch=torch.__version__,
                    compiled=self.compile)
        if self.device.type == "cuda":
            info["gpu"] = torch.cuda.get_device_name(self.device)
        return info


class CompiledTorchRunner(TorchRunner):
    """The same graphs through torch.compile (default inductor backend)."""

    backend = "torch-compile"
    compile = True
