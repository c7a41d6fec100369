"""PyTorch backend: the reference (FP32 eager), autocast FP16/BF16, and torch.compile."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch

from lga_export.runtime.base import Runner

_AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16}


class TorchRunner(Runner):
    """Runs the model's graphs through the same wrappers that are exported."""

    backend = "torch"

    def __init__(self, model: torch.nn.Module, precision: str = "fp32", device: str | torch.device = "cpu",
                 compile: bool = False) -> None:
        super().__init__(precision)
        if precision not in ("fp32", *_AUTOCAST):
            raise ValueError(f"PyTorch precision must be fp32, fp16 or bf16, not {precision}")
        self.model = model
        self.device = torch.device(device)
        self.compile = compile
        if compile:
            self.backend = "torch-compile"
        self.graphs: dict[str, torch.nn.Module] = {}

    def activate(self) -> None:
        from lga_export.export.wrappers import graph_modules

        self.model.to(self.device).eval()
        graphs = graph_modules(self.model)
        self.graphs = {k: torch.compile(v) if self.compile else v for k, v in graphs.items()}
        self.active = True

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=_AUTOCAST[self.precision])

    def infer(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from lga_export.export.specs import graph_specs

        spec = {s.name: s for s in graph_specs(self.model.config)}[graph]
        args = [torch.from_numpy(np.ascontiguousarray(feeds[name])).to(self.device) for name in spec.input_names]
        with torch.inference_mode(), self._autocast():
            output = self.graphs[graph](*args)
        return {spec.output_names[0]: output.float().cpu().numpy()}

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
