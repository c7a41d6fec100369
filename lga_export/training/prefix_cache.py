"""Tokens of the frozen encoder stages before the first FFM, computed once per image.

With a frozen encoder and no augmentation, what the stages before the first FFM produce for an
image never changes and does not depend on the report, so training computes it once and keeps
it. For `lite` (first FFM at the input of stage 2) that is 4096 x 160 tokens per image (1.3 MB as
float16) and stage 0 at full resolution, most of the encoder's 75 GFLOP, which is what makes
training on a 2-core CPU possible. The prefix runs in OpenVINO (an ONNX export of the prefix, compiled with the BF16 hint
where the CPU has native BF16: 1.1 s against 3.4 s per image in PyTorch eager, 2-core EPYC under
load) and is filled lazily: each batch computes the images it has not seen, so the first epoch
pays for the cache and training starts at once.

Cache files live in `<run>/prefix_cache/`, named by a key over the prefix weights, the config,
the precision and the image files, so a changed model or image list never meets stale tokens.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lga_export.data.lvit import Sample


class _Prefix(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.encode_prefix(image)


def supports_prefix_cache(model: nn.Module) -> bool:
    """A model whose frozen stages before the first FFM can be cached."""
    return hasattr(model, "encode_prefix") and hasattr(model, "forward_suffix") and \
        not model.config.train_image_encoder


def _prefix_digest(model: nn.Module) -> str:
    digest = hashlib.sha256(model.config.to_json().encode())
    for name, tensor in sorted(model.image_encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


class PrefixCache:
    """sample index -> prefix tokens (float16 memmap on disk), filled on first use."""

    def __init__(self, model: nn.Module, samples: list[Sample], folder: Path, name: str,
                 precision: str = "bf16") -> None:
        self.model = model
        self.precision = precision
        files = [str(Path(s.image).resolve()) for s in samples]
        weights = _prefix_digest(model)  # hashes the encoder's weights: once
        key = hashlib.sha256(json.dumps([weights, precision, files]).encode()).hexdigest()[:20]
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.graph = folder / f"prefix-{weights[:20]}.onnx"
        with torch.no_grad():
            shape = tuple(model.encode_prefix(torch.zeros(1, 3, model.config.image_size,
                                                          model.config.image_size)).shape[1:])
        self.tokens = self._memmap(folder / f"{name}-{key}.tokens.npy", (len(samples), *shape), np.float16)
        self.done = self._memmap(folder / f"{name}-{key}.done.npy", (len(samples),), np.bool_)
        self.request = None

    @staticmethod
    def _memmap(path: Path, shape: tuple[int, ...], dtype) -> np.ndarray:
        if path.is_file():
            array = np.load(path, mmap_mode="r+")
            if array.shape == shape and array.dtype == dtype:
                return array
        return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)

    @property
    def filled(self) -> int:
        return int(self.done.sum())

    def _compile(self) -> None:
        import openvino as ov

        from lga_export.runtime.openvino_runner import cpu_bf16_support

        if not self.graph.is_file():
            size, was_training = self.model.config.image_size, self.model.training
            tmp = self.graph.with_suffix(".tmp.onnx")
            try:
                torch.onnx.export(_Prefix(self.model).eval(), (torch.zeros(1, 3, size, size),), str(tmp),
                                  dynamo=True, input_names=["image"], output_names=["tokens"], external_data=False)
            finally:
                self.model.train(was_training)
            tmp.replace(self.graph)
        core = ov.Core()
        hint = "bf16" if self.precision == "bf16" and cpu_bf16_support(core)["supported"] else "f32"
        model = core.read_model(str(self.graph))
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"})
        self.request = compiled.create_infer_request()

    def get(self, indexes: list[int], pixels: torch.Tensor) -> torch.Tensor:
        """Prefix tokens (float32) of the samples `indexes`, whose normalised pixels are `pixels`."""
        for row, index in enumerate(indexes):
            if not self.done[index]:
                if self.request is None:
                    self._compile()
                out = self.request.infer({"image": pixels[row:row + 1].numpy()})
                self.tokens[index] = next(iter(out.values()))[0].astype(np.float16)
                self.done[index] = True
        return torch.from_numpy(np.stack([self.tokens[i] for i in indexes]).astype(np.float32))

    def flush(self) -> None:
        self.tokens.flush()
        self.done.flush()
