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
the precision and the image files' contents, so a changed model or image never meets stale tokens.
What is reused is verified like the runtime's caches: the prefix graph must reproduce PyTorch's
prefix on a real image before it computes anything, a reopened cache has a sample of its stored
tokens recomputed (a mismatch discards them), and an entry counts as done only once its tokens
are on disk (the done flags are written after the tokens, atomically).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lga_export.data.lvit import Sample
from lga_export.errors import LGAError
from lga_export.fileio import atomic_file
from lga_export.modeling.modes import eval_mode

log = logging.getLogger(__name__)

# Cosine similarity between the prefix graph's tokens and PyTorch FP32's for the same image: BF16
# moves lite's prefix tokens by ~7% of their RMS (cosine ~0.997); a wrong graph lands far below.
GRAPH_AGREEMENT = 0.99
# A stored entry recomputed by the same compiled graph: only the float16 storage differs.
STORED_AGREEMENT = 0.9999


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))


def _file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class _Prefix(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.encode_prefix(image)


def supports_prefix_cache(model: nn.Module) -> bool:
    """A model whose stages before the first FFM are frozen, so they can be computed once and cached."""
    return hasattr(model, "prefix_modules") and hasattr(model, "forward_suffix") and not any(
        p.requires_grad for module in model.prefix_modules().values() for p in module.parameters())


def _prefix_digest(model: nn.Module) -> str:
    """The config and the weights of the prefix stages (hashed as `checkpoint.model_digest` hashes a
    model): later stages may train without making the cached tokens stale."""
    from lga_export.checkpoint import hash_tensors

    config = model.config.replace(train_encoder_stages=0)  # which later stages train does not matter
    digest = hashlib.sha256(config.to_json().encode())
    hash_tensors(digest, ((f"{name}.{key}", tensor) for name, module in model.prefix_modules().items()
                          for key, tensor in module.state_dict().items()))
    return digest.hexdigest()


class PrefixCache:
    """sample index -> prefix tokens (float16 memmap on disk), filled on first use."""

    def __init__(self, model: nn.Module, samples: list[Sample], folder: Path, name: str,
                 precision: str = "bf16") -> None:
        self.model = model
        self.precision = precision
        self.samples = samples
        files = [_file_digest(s.image) for s in samples]  # contents, not paths: an edited image is new
        weights = _prefix_digest(model)  # hashes the encoder's weights: once
        key = hashlib.sha256(json.dumps([weights, precision, files]).encode()).hexdigest()[:20]
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.graph = folder / f"prefix-{weights[:20]}.onnx"
        with torch.no_grad():
            shape = tuple(model.encode_prefix(torch.zeros(1, 3, model.config.image_size,
                                                          model.config.image_size)).shape[1:])
        self.tokens = self._memmap(folder / f"{name}-{key}.tokens.npy", (len(samples), *shape), np.float16)
        self.done_file = folder / f"{name}-{key}.done.npy"
        self.done = self._load_done(len(samples))
        self.request = None
        self.computed = 0  # entries computed by this process (the rest were read from disk)
        self.checked = self.filled == 0  # a reopened cache is spot-checked before its first use

    @staticmethod
    def _memmap(path: Path, shape: tuple[int, ...], dtype) -> np.ndarray:
        if path.is_file():
            array = np.load(path, mmap_mode="r+")
            if array.shape == shape and array.dtype == dtype:
                return array
        return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)

    def _load_done(self, count: int) -> np.ndarray:
        """The done flags saved by `flush` (all False when missing, unreadable or of another shape)."""
        try:
            done = np.load(self.done_file)
        except (OSError, ValueError):
            return np.zeros(count, dtype=np.bool_)
        return done if done.shape == (count,) and done.dtype == np.bool_ else np.zeros(count, dtype=np.bool_)

    @property
    def filled(self) -> int:
        return int(self.done.sum())

    def _export_graph(self) -> None:
        size = self.model.config.image_size
        tmp = self.graph.with_suffix(".tmp.onnx")
        try:
            with eval_mode(self.model):
                torch.onnx.export(_Prefix(self.model).eval(), (torch.zeros(1, 3, size, size),), str(tmp), dynamo=True,
                                  input_names=["image"], output_names=["tokens"], external_data=False)
            tmp.replace(self.graph)
        finally:
            tmp.unlink(missing_ok=True)

    def _compile(self, pixels: torch.Tensor) -> None:
        """Compile the prefix graph (exported on first use) and check it against PyTorch on `pixels`
        (1x3xSxS, a real image): a graph left by an earlier run is a copy and is verified too. A
        graph that fails is exported again once; a fresh one that fails is an error."""
        for attempt in (0, 1):
            if not self.graph.is_file():
                self._export_graph()
            agreement = self._compile_and_check(pixels)
            if agreement >= GRAPH_AGREEMENT:
                return
            if attempt == 0:
                log.warning("prefix graph %s disagrees with the model (cosine %.4f < %.2f): exporting it again",
                            self.graph.name, agreement, GRAPH_AGREEMENT)
                self.graph.unlink(missing_ok=True)
        raise LGAError(f"the prefix graph exported from this model disagrees with PyTorch (cosine {agreement:.4f}); "
                       f"train with --no-prefix-cache")

    def _compile_and_check(self, pixels: torch.Tensor) -> float:
        import openvino as ov

        from lga_export.runtime.openvino_runner import cpu_bf16_support

        core = ov.Core()
        hint = "bf16" if self.precision == "bf16" and cpu_bf16_support(core)["supported"] else "f32"
        try:
            model = core.read_model(str(self.graph))
            compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"})
        except RuntimeError:  # a truncated or foreign file
            return -1.0
        self.request = compiled.create_infer_request()
        with eval_mode(self.model), torch.no_grad():
            expected = self.model.encode_prefix(pixels).numpy()
        return cosine(self._infer(pixels), expected)

    def _infer(self, pixels: torch.Tensor) -> np.ndarray:
        out = self.request.infer({"image": pixels.numpy()})
        return next(iter(out.values()))[0]

    def _spot_check(self, pixels_of) -> None:
        """Recompute the first and the middle stored entry; any mismatch discards every stored entry."""
        stored = np.flatnonzero(self.done)
        picks = sorted({int(stored[0]), int(stored[len(stored) // 2])})
        for index in picks:
            pixels = pixels_of(index)
            if self.request is None:
                self._compile(pixels)
            agreement = cosine(self._infer(pixels), np.asarray(self.tokens[index], dtype=np.float32))
            if agreement < STORED_AGREEMENT:
                log.warning("prefix cache %s: a stored entry does not match its image (cosine %.4f); recomputing "
                            "all %d entries", self.done_file.name, agreement, len(stored))
                self.done[:] = False
                break
        self.checked = True

    def get(self, indexes: list[int], pixels: torch.Tensor) -> torch.Tensor:
        """Prefix tokens (float32) of the samples `indexes`, whose normalised pixels are `pixels`."""
        if not self.checked:
            self._spot_check(self._pixels_loader(indexes, pixels))
        for row, index in enumerate(indexes):
            if not self.done[index]:
                if self.request is None:
                    self._compile(pixels[row:row + 1])
                self.tokens[index] = self._infer(pixels[row:row + 1]).astype(np.float16)
                self.done[index] = True
                self.computed += 1
        return torch.from_numpy(np.stack([self.tokens[i] for i in indexes]).astype(np.float32))

    def _pixels_loader(self, indexes: list[int], pixels: torch.Tensor):
        """index -> 1x3xSxS normalised pixels: from the batch when it holds the sample, else read."""
        from lga_export.data.dataset import SegmentationDataset

        def pixels_of(index: int) -> torch.Tensor:
            if index in indexes:
                row = indexes.index(index)
                return pixels[row:row + 1]
            item = SegmentationDataset([self.samples[index]], self.model.config, train=False)[0]
            return item["pixels"].unsqueeze(0)
        return pixels_of

    def flush(self) -> None:
        """Tokens to disk first, then the flags that say they are there (atomically)."""
        self.tokens.flush()
        with atomic_file(self.done_file, force=True) as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, self.done)
