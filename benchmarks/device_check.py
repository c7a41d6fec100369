"""Device-ready check of the LGA image graph on a bare GPU machine, from a small carried bundle.

The target machine has PyTorch + CUDA but no internet, no TensorRT, no onnxruntime-gpu, no
segment-anything and no text model, and receives at most 64 MiB of files. So the work is
split in two:

    python benchmarks/device_check.py prepare BUNDLE_DIR      # here, on the CPU machine
    python benchmarks/device_check.py run BUNDLE_DIR OUT      # there, on the GPU

`prepare` writes, atomically, a bundle (< 48 MiB, checked) holding for each preset:
- the image inputs: validation samples (QaTa-COV19 Val when present, else built-in) resized to
  the model's input size as uint8 pixels (lossless: SAM's bilinear resize yields whole values),
  with the sha256 of the normalised float32 batch so the device proves it rebuilt it bitwise;
- FP32 text embeddings computed here (the 83 MB MiniLM cannot travel): tiny's from its own text
  branch, vit_b's from MiniLM + a random projection (seed + 1);
- the CPU FP32 reference logits of the image graph (`forward_image`);
- how to rebuild the image-graph weights there: tiny from the default checkpoint shipped in the
  repository (lga_export/assets/default_model/), vit_b from a seed (random SAM weights, never
  carried) with `text_source="learnable_query"`, so no text backbone is needed - plus their
  digests, verified bitwise here (two builds) and again on the device;
- segment-anything's source (pure Python, ~0.3 MB), which the device lacks.

`run` rebuilds each model on the device, checks weights and inputs against the recorded
digests, and measures `forward_image` with PyTorch FP32 (TF32 off), FP16 and BF16 autocast
and torch.compile (FP32, in a child process under a time cap: skipped with the reason when it
fails or runs out of time): CUDA-event latency (warm-up, then p50/p90), device memory, and the
per-sample mask agreement (Dice of logits > 0) with the carried CPU FP32 reference through
`lga_export.verify.parity.compare`. It writes OUT/results.json (updated after every preset) and
OUT/report.md, and says plainly what it could not check. Exit code: 0 all measured variants
within the spec's tolerance, 1 a variant failed or missed it, 2 a bundle or setup problem.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import hashlib
import importlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a bare checkout: the package is not installed there
    sys.path.insert(0, str(REPO))
# Standard-library-only modules of the package (they travel with the working tree): safe to import
# before preflight() has checked the third-party packages.
from lga_export.errors import one_line  # noqa: E402
from lga_export.fileio import atomic_file, sha256_file  # noqa: E402
from lga_export.runtime.host import cpu_identity, disk_bytes, gpu_identity  # noqa: E402

try:
    import numpy as np  # noqa: E402
except ImportError:  # preflight() names it with whatever else is missing (exit 2)
    np = None  # type: ignore[assignment]

BUNDLE_FORMAT = "lga-device-bundle/1"
BUNDLE_JSON = "bundle.json"
SITE_DIR = "site"  # carried pure-Python packages the device lacks (segment-anything)
MAX_BUNDLE_BYTES = 48 << 20
DEFAULT_CHECKPOINT = "lga_export/assets/default_model/lga_tiny_qata.safetensors"
PRESETS = ("tiny", "vit_b")
EAGER_VARIANTS = ("fp32", "fp16", "bf16")
COMPILE_VARIANT = "compile-fp32"
# What `run` (and its torch.compile child) imports: import name -> pip package. The bare GPU image
# has them all; segment_anything comes from the bundle. benchmarks/simulate_bare_device.py proves
# the list in a venv holding only the image's packages.
RUN_REQUIREMENTS = {"numpy": "numpy", "torch": "torch", "torchvision": "torchvision", "safetensors": "safetensors",
                    "PIL": "pillow"}
RUN_PROJECT_MODULES = ("lga_export.config", "lga_export.checkpoint", "lga_export.build", "lga_export.contract",
                       "lga_export.verify.parity", "lga_export.preprocess", "lga_export.errors", "lga_export.fileio",
                       "lga_export.runtime.host")
NOT_CHECKED = [
    "TensorRT engines: not run by this check (TensorRT is not installed on the device and cannot be "
    "installed offline); benchmarks/gpu_check.sh builds and measures them on a GPU machine with access "
    "to https://pypi.nvidia.com.",
    "ONNX Runtime on the GPU: not run (no onnxruntime-gpu on the device).",
    "The text graph on the GPU: the MiniLM text model (83 MB) cannot travel in the 64 MiB bundle, so the "
    "text embeddings were computed on the CPU in FP32 by `prepare` and fed to the image graph.",
    "End-to-end latency (tokenise, text graph, image graph, upsampling): only the image graph is timed, "
    "on inputs already on the device (host copies excluded).",
]


class CheckError(Exception):
    """A bundle or setup problem: one line, exit code 2."""


# ---------------------------------------------------------------- small helpers

def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def array_sha256(array: np.ndarray) -> str:
    array = np.ascontiguousarray(array)
    return sha256_bytes(f"{array.dtype}|{array.shape}|".encode() + array.tobytes())


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def write_json(path: Path, data: Any) -> None:
    """Atomic JSON write (a reader, or a killed run, never leaves half a file)."""
    with atomic_file(path, force=True) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")


def ensure_segment_anything(bundle: Path | None) -> None:
    """Import segment-anything, from the bundle's copy when the machine has none."""
    try:
        import segment_anything  # noqa: F401
        return
    except ImportError:
        pass
    site = bundle / SITE_DIR if bundle is not None else None
    if site is None or not (site / "segment_anything").is_dir():
        raise CheckError("segment-anything is not installed and the bundle carries no copy; run prepare again")
    sys.path.insert(0, str(site))
    import segment_anything  # noqa: F401


def preflight(bundle: Path) -> None:
    """Import everything `run` needs before any work: on a lent GPU a missing package must cost
    seconds and name itself, all at once (exit 2), not surface minutes in as a traceback."""
    missing = []
    for module, package in RUN_REQUIREMENTS.items():
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            lacking = "" if exc.name in (None, module) else f", which needs the missing {exc.name}"
            missing.append(f"{module} (pip package {package}{lacking})")
        except Exception as exc:  # noqa: BLE001 - installed but broken, e.g. a native library that fails to load
            broken = one_line(str(exc), 120)
            missing.append(f"{module} (pip package {package}, broken: {type(exc).__name__}: {broken})")
    if missing:
        raise CheckError(f"missing on this machine: {', '.join(missing)}; install them (the GPU image is "
                         f"expected to have them) or run where they are")
    ensure_segment_anything(bundle)
    for module in RUN_PROJECT_MODULES:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise CheckError(f"{module} cannot be imported ({exc}); the working tree is incomplete, or the check "
                             f"needs a package that RUN_REQUIREMENTS does not list") from None


def image_graph_digest(model) -> str:
    """sha256 over every weight the image graph uses (all but the text branch): name, dtype,
    shape and bytes, so a rebuild on another machine is proven bitwise identical."""
    from lga_export.checkpoint import hash_tensors

    digest = hashlib.sha256()
    hash_tensors(digest, ((name, tensor) for name, tensor in model.state_dict().items()
                          if not name.startswith("text_encoder.")))
    return digest.hexdigest()


# ---------------------------------------------------------------- models without a text backbone

def image_config(preset: str, checkpoint: Path | None = None):
    """The preset's config with `text_source="learnable_query"`: LGA then builds no text
    backbone, and `forward_image` (what is measured) is the same graph."""
    from lga_export.checkpoint import load_lga_config
    from lga_export.config import get_preset

    config = load_lga_config(checkpoint) if checkpoint is not None else get_preset(preset)
    return config.replace(text_source="learnable_query")


def seeded_image_model(config, seed: int):
    """Random SAM/LGA weights from `seed` (built on the CPU, where the generator is portable)."""
    import torch

    from lga_export.build import build_lga

    torch.manual_seed(seed)
    return build_lga(config).eval()


def checkpoint_image_model(config, checkpoint: Path, seed: int):
    """The checkpoint's image-graph weights (everything but the text branch) in a model built
    without a text backbone."""
    from safetensors.torch import load_file

    model = seeded_image_model(config, seed)
    state = {k: v for k, v in load_file(str(checkpoint)).items() if not k.startswith("text_encoder.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    stray = [k for k in missing if not k.startswith("text_encoder.")]
    if stray or unexpected:
        raise CheckError(f"{checkpoint}: does not match the {config.preset} image graph "
                         f"(missing {stray[:3]}, unexpected {list(unexpected)[:3]})")
    return model.eval()


def build_image_model(entry: dict[str, Any]):
    """The image-graph model a bundle entry describes, and its recorded digest check."""
    from lga_export.config import LGAConfig

    config = LGAConfig.from_json(json.dumps(entry["config"]))
    weights = entry["weights"]
    if weights["kind"] == "checkpoint":
        path = REPO / weights["path"]
        if not path.is_file():
            raise CheckError(f"{path} is missing; it travels with the repository's working tree")
        if sha256_file(path) != weights["sha256"]:
            raise CheckError(f"{path}: sha256 differs from the bundle (another checkpoint); run prepare again")
        return checkpoint_image_model(config, path, weights["seed"])
    return seeded_image_model(config, weights["seed"])


# ---------------------------------------------------------------- prepare (CPU machine)

def _resized_pixels(samples, size: int) -> np.ndarray:
    """N x S x S x 3 uint8: SAM's bilinear resize (PIL on uint8) is whole-valued, so this is lossless."""
    from lga_export.preprocess import resize_rgb

    pixels = []
    for sample in samples:
        resized = resize_rgb(sample.rgb, size)
        as_u8 = resized.astype(np.uint8)
        if not np.array_equal(as_u8.astype(np.float32), resized):
            raise CheckError("the resize produced non-integer pixels; the bundle cannot store them losslessly")
        pixels.append(as_u8)
    return np.stack(pixels)


def normalized_batch(pixels: np.ndarray, config) -> np.ndarray:
    """N x 3 x S x S float32, exactly what the pipeline feeds the image graph."""
    from lga_export.preprocess import normalize_pixels

    return np.stack([normalize_pixels(p.astype(np.float32), config) for p in pixels])


def _text_embeddings_of(model, texts: list[str]) -> np.ndarray:
    """FP32 text embeddings of a full model's own text branch, through the shared pipeline."""
    from lga_export.runtime.pipeline import Segmenter
    from lga_export.runtime.torch_runner import TorchRunner

    with TorchRunner(model, "fp32", "cpu") as runner:
        return Segmenter(runner).text_embeddings(texts)


def _text_embeddings_random(config, texts: list[str], seed: int) -> np.ndarray:
    """MiniLM (the bundled text model) mean-pooled, through a random Linear to the ViT width."""
    import torch

    from lga_export.contract import TEXT_GRAPH, specs_by_name
    from lga_export.modeling.text_encoder import TextEncoder, load_text_backbone, load_text_tokenizer

    torch.manual_seed(seed)
    encoder = TextEncoder(load_text_backbone(config.text_model), config.text_dim).eval()
    feeds = load_text_tokenizer(config.text_model).encode(texts, config.max_text_length)
    names = specs_by_name(config)[TEXT_GRAPH].input_names
    with torch.inference_mode():
        return encoder(*(torch.from_numpy(feeds[name]) for name in names)).numpy()


def _reference_logits(model, images: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
    """CPU FP32 `forward_image`, one sample at a time."""
    import torch

    out = []
    with torch.inference_mode():
        for image, embedding in zip(images, embeddings):
            out.append(model.forward_image(torch.from_numpy(image[None]), torch.from_numpy(embedding[None])).numpy())
    return np.concatenate(out)


def prepare_preset(preset: str, samples, seed: int, folder: Path, log: Callable[[str], None]) -> dict[str, Any]:
    import torch

    from lga_export.checkpoint import model_digest

    texts = [s.text for s in samples]
    names = [s.name for s in samples]
    start = time.perf_counter()
    if preset == "tiny":
        checkpoint = REPO / DEFAULT_CHECKPOINT
        if not checkpoint.is_file():
            raise CheckError(f"{checkpoint} is missing; the tiny default model ships with the repository")
        from lga_export.loading import load_model

        config = image_config(preset, checkpoint)
        model = checkpoint_image_model(config, checkpoint, seed)
        full = load_model(checkpoint=checkpoint).eval()
        embeddings = _text_embeddings_of(full, texts)
        weights = {"kind": "checkpoint", "path": DEFAULT_CHECKPOINT, "sha256": sha256_file(checkpoint), "seed": seed,
                   "text_embeddings": "the checkpoint's own text branch (MiniLM + trained projection), CPU FP32"}
        # The full model (with its text backbone) must hold the same image-graph weights, bit for bit.
        if image_graph_digest(full) != image_graph_digest(model):
            raise CheckError("the image-graph weights differ between the full tiny model and the one built "
                             "without a text backbone")
        del full
    else:
        config = image_config(preset)
        model = seeded_image_model(config, seed)
        again = seeded_image_model(config, seed)
        if model_digest(model) != model_digest(again):
            raise CheckError(f"two builds of {preset} from seed {seed} differ; the device could not rebuild them")
        del again
        embeddings = _text_embeddings_random(config, texts, seed + 1)
        weights = {"kind": "seed", "seed": seed, "model_digest": model_digest(model),
                   "text_embeddings": f"MiniLM mean-pooled through a random Linear(384 -> {config.text_dim}) "
                                      f"(seed {seed + 1}), CPU FP32"}
    weights["image_graph_digest"] = image_graph_digest(model)
    pixels = _resized_pixels(samples, config.image_size)
    images = normalized_batch(pixels, config)
    log(f"  {preset}: computing the CPU FP32 reference on {len(samples)} samples "
        f"({config.image_size} px, {torch.get_num_threads()} threads) ...")
    reference = _reference_logits(model, images, embeddings)
    if not np.isfinite(reference).all():
        raise CheckError(f"{preset}: the CPU FP32 reference has NaN/Inf values")
    data_file = f"{preset}.npz"
    np.savez_compressed(folder / data_file, pixels=pixels, embeddings=embeddings.astype(np.float32),
                        reference_logits=reference.astype(np.float32))
    log(f"  {preset}: done in {time.perf_counter() - start:.1f} s")
    return {"config": json.loads(config.to_json()), "weights": weights, "data": data_file, "names": names,
            "texts": texts, "input_sha256": array_sha256(images), "image_size": config.image_size,
            "reference": {"backend": "torch", "device": "cpu", "precision": "fp32", "torch": torch.__version__,
                          "batch": 1, "foreground": [float((r > 0).mean()) for r in reference]}}


def copy_segment_anything(site: Path) -> None:
    import segment_anything

    source = Path(segment_anything.__file__).resolve().parent
    shutil.copytree(source, site / "segment_anything", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def prepare(bundle: Path, presets: list[str], count: int, seed: int, force: bool, data_root: Path | None,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    import torch

    from lga_export.fileio import atomic_dir
    from lga_export.samples import validation_samples

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # no load-time progress bars in the log
    with contextlib.suppress(ImportError):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    samples, source = validation_samples(count, data_root)
    if len(samples) < count:
        raise CheckError(f"only {len(samples)} validation samples were found, {count} asked for")
    log(f"prepare: {len(samples)} samples from {source}; presets {', '.join(presets)}")
    with atomic_dir(bundle, force=force) as tmp:
        copy_segment_anything(tmp / SITE_DIR)
        entries = {preset: prepare_preset(preset, samples, seed, tmp, log) for preset in presets}
        files = {p.relative_to(tmp).as_posix(): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        info = {"format": BUNDLE_FORMAT, "created": now(), "samples": source, "presets": entries, "files": files,
                "prepared_with": {"torch": torch.__version__, "numpy": np.__version__,
                                  "python": platform.python_version(), "machine": platform.machine()}}
        write_json(tmp / BUNDLE_JSON, info)
        size = disk_bytes(tmp)
        if size > MAX_BUNDLE_BYTES:
            raise CheckError(f"the bundle would be {size / 2**20:.1f} MiB, over the {MAX_BUNDLE_BYTES >> 20} MiB "
                             f"limit; use fewer --samples")
        info["bytes"] = size
    log(f"prepare: wrote {bundle} ({size / 2**20:.2f} MiB, limit {MAX_BUNDLE_BYTES >> 20} MiB)")
    return info


# ---------------------------------------------------------------- run (GPU machine)

def read_bundle(bundle: Path) -> dict[str, Any]:
    path = bundle / BUNDLE_JSON
    if not path.is_file():
        raise CheckError(f"{path} not found; make the bundle with: python benchmarks/device_check.py prepare {bundle}")
    info = json.loads(path.read_text())
    if info.get("format") != BUNDLE_FORMAT:
        raise CheckError(f"{path}: format {info.get('format')!r}, this script reads {BUNDLE_FORMAT}; run prepare again")
    for relative, digest in info.get("files", {}).items():
        file = bundle / relative
        if not file.is_file() or sha256_file(file) != digest:
            raise CheckError(f"{file}: missing or changed since prepare; run prepare again")
    return info


def machine_info(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"device": device, "torch": torch.__version__, "python": platform.python_version(),
                            "numpy": np.__version__, "cpu": cpu_identity()[0], "cpu_threads": torch.get_num_threads()}
    if device.startswith("cuda"):
        index = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(index)
        info.update(**gpu_identity(index),
                    gpu_memory_gib=round(props.total_memory / 2**30, 1), multiprocessors=props.multi_processor_count,
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    for name in ("tensorrt", "onnxruntime"):
        try:
            module = __import__(name)
            info[name] = getattr(module, "__version__", "?")
            if name == "onnxruntime":
                info["onnxruntime_providers"] = module.get_available_providers()
        except Exception as exc:  # noqa: BLE001 - only reporting what is there
            info[name] = f"not available ({type(exc).__name__})"
    return info


def set_fp32_numerics() -> None:
    """FP32 means FP32: no TF32 in matmuls or convolutions."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


class Inputs:
    """One preset's carried data, rebuilt and checked."""

    def __init__(self, bundle: Path, entry: dict[str, Any]) -> None:
        from lga_export.config import LGAConfig

        self.config = LGAConfig.from_json(json.dumps(entry["config"]))
        with np.load(bundle / entry["data"]) as data:
            self.pixels = data["pixels"]
            self.text_embedding = np.ascontiguousarray(data["embeddings"], dtype=np.float32)
            self.reference = np.ascontiguousarray(data["reference_logits"], dtype=np.float32)
        self.names = list(entry["names"])
        self.images = normalized_batch(self.pixels, self.config)
        self.input_ok = array_sha256(self.images) == entry["input_sha256"]

    def batch(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """`size` samples (repeated when fewer were carried)."""
        index = np.arange(size) % len(self.images)
        return self.images[index], self.text_embedding[index]


def _autocast(precision: str, device_type: str):
    import torch

    if precision == "fp16":
        return torch.autocast(device_type=device_type, dtype=torch.float16)
    if precision == "bf16":
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _latency(fn: Callable[[], Any], device, warmup: int, iters: int) -> dict[str, Any]:
    """CUDA-event timings on a GPU (host timer on the CPU): warm-up, then p50/p90 over iterations."""
    import torch

    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for _ in range(iters):
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        timer = "cuda events"
    else:
        for _ in range(iters):
            begin = time.perf_counter()
            fn()
            times.append((time.perf_counter() - begin) * 1e3)
        timer = "host perf_counter (CPU)"
    values = np.asarray(times)
    return {"p50_ms": round(float(np.percentile(values, 50)), 3), "p90_ms": round(float(np.percentile(values, 90)), 3),
            "mean_ms": round(float(values.mean()), 3), "min_ms": round(float(values.min()), 3),
            "iters": iters, "warmup": warmup, "timer": timer}


def measure_variant(model, inputs: Inputs, precision: str, device, batches: list[int], warmup: int, iters: int,
                    compiled: bool = False) -> dict[str, Any]:
    """Agreement with the carried reference, latency per batch and memory for one variant."""
    import torch

    from lga_export.contract import tolerance
    from lga_export.verify.parity import compare, failures

    graph = model.forward_image
    if compiled:
        graph = torch.compile(model.forward_image)
    cuda = device.type == "cuda"
    memory: dict[str, Any] = {}
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        free_before, total = torch.cuda.mem_get_info(device)

    def run(image, embedding):
        with torch.inference_mode(), _autocast(precision, device.type):
            return graph(image, embedding)

    started = time.perf_counter()
    chunk = max(batches)
    outputs = []
    for begin in range(0, len(inputs.images), chunk):
        image = torch.from_numpy(inputs.images[begin:begin + chunk]).to(device)
        embedding = torch.from_numpy(inputs.text_embedding[begin:begin + chunk]).to(device)
        outputs.append(run(image, embedding).float().cpu().numpy())
    first_pass_s = time.perf_counter() - started
    candidate = np.concatenate(outputs)
    parity = compare(inputs.reference, candidate, inputs.names, masks=True)
    tol = tolerance(precision)
    problems = failures(parity, tol, check_atol=False)
    latency = {}
    for size in batches:
        image, embedding = (torch.from_numpy(a).to(device) for a in inputs.batch(size))
        latency[str(size)] = _latency(lambda: run(image, embedding), device, warmup, iters)
    if cuda:
        torch.cuda.synchronize(device)
        free_after, _ = torch.cuda.mem_get_info(device)
        memory = {
            "pytorch_peak_allocated_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1),
            "pytorch_peak_reserved_mib": round(torch.cuda.max_memory_reserved(device) / 2**20, 1),
            "note": "PyTorch caching allocator only (weights included; the CUDA context, cuBLAS/cuDNN "
                    "workspaces outside the allocator and other processes are not counted)",
            "device_used_mib_before": round((total - free_before) / 2**20, 1),
            "device_used_mib_after": round((total - free_after) / 2**20, 1),
            "device_total_mib": round(total / 2**20, 1),
            "device_note": "torch.cuda.mem_get_info: everything on the GPU, all processes and the CUDA context",
        }
    return {"status": "measured", "precision": precision, "compiled": compiled,
            "autocast": precision if precision in ("fp16", "bf16") else None,
            "first_pass_s": round(first_pass_s, 2), "latency": latency, "memory": memory,
            "parity": parity.to_dict(), "tolerance": {"atol": tol.atol, "min_dice": tol.min_dice},
            "atol_met": None if tol.atol is None else parity.max_abs_diff <= tol.atol,
            "problems": problems, "passed": not problems}


def _kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the parent dies (Linux), even by SIGKILL."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def run_capped(command: list[str], log, cap_s: float) -> int | None:
    """Run `command` in a process group of its own (torch.compile's workers included) with output to
    `log`; its exit code, or None when it hit `cap_s` and the group was killed. The group is in its
    own session, so the shell's `timeout` around this process cannot reach it: a SIGTERM here kills
    the group before this process goes, and the child dies with its parent on anything else."""
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                               preexec_fn=_die_with_parent)
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: Any) -> None:
        _kill_group(process)
        signal.signal(signal.SIGTERM, previous if callable(previous) else signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, on_term)
    try:
        return process.wait(timeout=cap_s)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        return None
    finally:
        signal.signal(signal.SIGTERM, previous)


def measure_compiled(bundle: Path, preset: str, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """torch.compile in a child process under a time cap (inductor's workers die with its group)."""
    result_file = out / f".{preset}.{COMPILE_VARIANT}.json"
    result_file.unlink(missing_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "_compiled", str(bundle), preset, str(result_file),
               "--device", args.device, "--warmup", str(args.warmup), "--iters", str(args.iters),
               "--batches", ",".join(map(str, args.batch_list))]
    log_file = out / f"{preset}.compile.log"
    started = time.perf_counter()
    with open(log_file, "w") as log:
        code = run_capped(command, log, args.compile_timeout)
    if code is None:
        return {"status": "skipped", "reason": f"torch.compile did not finish within the "
                f"{args.compile_timeout} s cap (killed)", "seconds": round(time.perf_counter() - started, 1)}
    seconds = round(time.perf_counter() - started, 1)
    if code != 0 or not result_file.is_file():
        tail = [line for line in log_file.read_text(errors="replace").splitlines() if line.strip()]
        return {"status": "skipped", "reason": f"torch.compile failed (exit {code}): "
                f"{one_line(tail[-1], 300) if tail else 'no output'}", "seconds": seconds}
    result = json.loads(result_file.read_text())
    result_file.unlink()
    log_file.unlink(missing_ok=True)
    result["seconds_with_compile"] = seconds
    return result


def prepare_model(bundle: Path, entry: dict[str, Any], inputs: Inputs, device) -> tuple[Any, dict[str, Any]]:
    """The image-graph model on `device`, with the weight check's verdict."""
    from lga_export.checkpoint import model_digest

    model = build_image_model(entry)
    weights = entry["weights"]
    check = {"kind": weights["kind"], "image_graph_digest_ok": image_graph_digest(model) == weights["image_graph_digest"]}
    if weights["kind"] == "seed":
        check["model_digest_ok"] = model_digest(model) == weights["model_digest"]
    check["ok"] = all(v for k, v in check.items() if k.endswith("_ok"))
    check["inputs_ok"] = inputs.input_ok
    return model.to(device).eval(), check


def run_preset(bundle: Path, preset: str, entry: dict[str, Any], out: Path, args: argparse.Namespace,
               log: Callable[[str], None]) -> dict[str, Any]:
    import torch

    device = torch.device(args.device)
    inputs = Inputs(bundle, entry)
    result: dict[str, Any] = {"samples": len(inputs.names), "image_size": inputs.config.image_size,
                              "weights": entry["weights"], "variants": {}}
    start = time.perf_counter()
    model, check = prepare_model(bundle, entry, inputs, device)
    result["checks"] = check
    if not check["inputs_ok"]:
        raise CheckError(f"{preset}: the normalised images differ from the ones prepare measured "
                         f"(numpy {np.__version__}); the reference does not apply")
    result["reference"] = {**entry["reference"], "source": "carried from prepare"}
    if not check["ok"]:
        # The weights rebuilt here are not the ones prepare used: recompute the FP32 reference on
        # this machine's CPU so the agreement still compares like with like, and say so.
        log(f"  {preset}: weights differ from the bundle's (torch {torch.__version__} here); "
            f"recomputing the CPU FP32 reference on this machine")
        cpu_model = build_image_model(entry)
        inputs.reference = _reference_logits(cpu_model, inputs.images, inputs.text_embedding)
        del cpu_model
        result["reference"] = {"backend": "torch", "device": "cpu", "precision": "fp32", "torch": torch.__version__,
                               "source": "recomputed on this machine's CPU: the weights rebuilt here differ "
                                         "from the bundle's"}
    log(f"  {preset}: model ready in {time.perf_counter() - start:.1f} s (weights check: "
        f"{'bitwise identical' if check['ok'] else 'DIFFERENT'})")
    for variant in args.variant_list:
        if variant == COMPILE_VARIANT:
            continue
        log(f"  {preset} {variant} ...")
        try:
            result["variants"][variant] = measure_variant(model, inputs, variant, device, args.batch_list,
                                                          args.warmup, args.iters)
        except Exception as exc:  # noqa: BLE001 - one failed variant must not hide the others
            reason = one_line(f"{type(exc).__name__}: {exc}", 500)
            result["variants"][variant] = {"status": "failed", "reason": reason, "passed": False}
        log(f"    {summary_line(result['variants'][variant])}")
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if COMPILE_VARIANT in args.variant_list:
        if args.no_compile:
            result["variants"][COMPILE_VARIANT] = {"status": "skipped", "reason": "--no-compile"}
        else:
            log(f"  {preset} {COMPILE_VARIANT} (cap {args.compile_timeout} s) ...")
            result["variants"][COMPILE_VARIANT] = measure_compiled(bundle, preset, out, args)
        log(f"    {summary_line(result['variants'][COMPILE_VARIANT])}")
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def summary_line(variant: dict[str, Any]) -> str:
    if variant.get("status") != "measured":
        return f"{variant.get('status', '?').upper()}: {variant.get('reason', '')}"
    first = next(iter(variant["latency"].values()))
    parity = variant["parity"]
    verdict = "ok" if variant["passed"] else "OUT OF TOLERANCE: " + "; ".join(variant["problems"])
    return (f"p50 {first['p50_ms']:.2f} ms (batch {next(iter(variant['latency']))}), worst Dice "
            f"{parity['dice_worst']:.4f}, max |diff| {parity['max_abs_diff']:.3g} - {verdict}")


def compiled_child(args: argparse.Namespace) -> int:
    """`_compiled`: one preset through torch.compile; writes the variant's result JSON."""
    import torch

    bundle = Path(args.bundle)
    ensure_segment_anything(bundle)
    set_fp32_numerics()
    info = read_bundle(bundle)
    entry = info["presets"][args.preset]
    device = torch.device(args.device)
    inputs = Inputs(bundle, entry)
    model, check = prepare_model(bundle, entry, inputs, device)
    if not check["ok"]:
        inputs.reference = _reference_logits(build_image_model(entry), inputs.images, inputs.text_embedding)
    result = measure_variant(model, inputs, "fp32", device, args.batch_list, args.warmup, args.iters, compiled=True)
    write_json(Path(args.result), result)
    return 0


def render_report(results: dict[str, Any]) -> str:
    machine = results["machine"]
    lines = ["# LGA image graph: device check", "",
             f"{results['started']} - {machine.get('gpu', machine['device'])} "
             f"(compute capability {machine.get('compute_capability', '-')}), torch {machine['torch']}, "
             f"CUDA {machine.get('cuda', '-')}.", "",
             f"Verdict: **{'PASSED' if results.get('passed') else 'FAILED'}**"
             f"{' (incomplete: ' + results['incomplete'] + ')' if results.get('incomplete') else ''}.", "",
             "Latency: the image graph (`forward_image`) on inputs already on the device; "
             f"{'CUDA events' if machine['device'].startswith('cuda') else 'host timer'}, p50/p90 over "
             f"{results['settings']['iters']} iterations after {results['settings']['warmup']} warm-up. "
             "FP32 runs with TF32 off. Agreement: per-sample Dice of the masks (logits > 0) against the "
             "CPU FP32 reference; the gate is the spec's min_dice per precision plus no NaN/Inf.", ""]
    batches = results["settings"]["batches"]
    for preset, result in results["presets"].items():
        lines += [f"## {preset}", ""]
        if "error" in result:
            lines += [f"**Not measured**: {result['error']}", ""]
            continue
        check = result["checks"]
        lines += [f"{result['samples']} samples at {result['image_size']} px. Weights: {result['weights']['kind']}"
                  f" ({'rebuilt bitwise identical' if check['ok'] else 'DIFFER from the bundle'}); reference: "
                  f"{result['reference']['source']}.", ""]
        head = " | ".join(f"p50 / p90 ms (b{b})" for b in batches)
        lines += [f"| variant | {head} | PyTorch peak alloc MiB | worst Dice | max abs diff | verdict |",
                  "| --- | " + " | ".join("---:" for _ in batches) + " | ---: | ---: | ---: | --- |"]
        for name, variant in result["variants"].items():
            if variant.get("status") != "measured":
                lines.append(f"| {name} | " + " | ".join("-" for _ in batches) +
                             f" | - | - | - | {variant.get('status', '?')}: {variant.get('reason', '')} |")
                continue
            times = " | ".join(f"{variant['latency'][str(b)]['p50_ms']:.2f} / {variant['latency'][str(b)]['p90_ms']:.2f}"
                               for b in batches)
            memory = variant["memory"].get("pytorch_peak_allocated_mib", "-")
            parity = variant["parity"]
            verdict = "ok" if variant["passed"] else "; ".join(variant["problems"])
            lines.append(f"| {name} | {times} | {memory} | {parity['dice_worst']:.4f} | "
                         f"{parity['max_abs_diff']:.3g} | {verdict} |")
        foreground = result["reference"].get("foreground") or []
        if foreground:
            lines += ["", f"Reference mask foreground per sample: {', '.join(f'{f:.3f}' for f in foreground)}"
                      + (" (all empty: agreement proves little)" if max(foreground) == 0 else "") + "."]
        lines.append("")
    lines += ["## Not checked here", ""] + [f"- {line}" for line in results["not_checked"]] + [""]
    return "\n".join(lines)


def run(bundle: Path, out: Path, args: argparse.Namespace, log: Callable[[str], None] = print) -> int:
    import torch

    out.mkdir(parents=True, exist_ok=True)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise CheckError("no CUDA GPU is visible to PyTorch; pass --device cpu for a smoke run")
    ensure_segment_anything(bundle)
    set_fp32_numerics()
    info = read_bundle(bundle)
    unknown = [p for p in args.preset_list if p not in info["presets"]]
    if unknown:
        raise CheckError(f"the bundle has no {unknown} (it holds {sorted(info['presets'])}); run prepare with them")
    results: dict[str, Any] = {
        "format": "lga-device-check/1", "started": now(), "machine": machine_info(args.device),
        "bundle": {k: info[k] for k in ("created", "samples", "prepared_with")},
        "settings": {"iters": args.iters, "warmup": args.warmup, "batches": args.batch_list,
                     "variants": args.variant_list, "compile_timeout_s": args.compile_timeout},
        "presets": {}, "not_checked": list(NOT_CHECKED), "passed": False, "incomplete": "still running"}
    if not args.device.startswith("cuda"):
        results["not_checked"].insert(0, "The GPU itself: this was a CPU smoke run (--device cpu); host "
                                         "timers, no device memory figures.")
    if any(info["presets"][p]["weights"]["kind"] == "seed" for p in args.preset_list):
        results["not_checked"].append("Segmentation quality of vit_b: its weights are random (seeded), so its "
                                      "agreement measures numerics only.")
    write_json(out / "results.json", results)
    started = time.perf_counter()
    for preset in args.preset_list:
        log(f"{preset}:")
        try:
            results["presets"][preset] = run_preset(bundle, preset, info["presets"][preset], out, args, log)
        except CheckError as exc:
            results["presets"][preset] = {"error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - record it, go on with the next preset
            results["presets"][preset] = {"error": f"{type(exc).__name__}: {exc}"[:500],
                                          "traceback": traceback.format_exc()[-3000:]}
        write_json(out / "results.json", results)
        (out / "report.md").write_text(render_report(results))
    measured = [v for r in results["presets"].values() for v in r.get("variants", {}).values()]
    errors = [p for p, r in results["presets"].items() if "error" in r]
    results["passed"] = not errors and bool(measured) and all(
        v.get("passed", True) for v in measured if v.get("status") != "skipped")
    results["incomplete"] = None
    results["seconds"] = round(time.perf_counter() - started, 1)
    write_json(out / "results.json", results)
    (out / "report.md").write_text(render_report(results))
    log(f"device check {'PASSED' if results['passed'] else 'FAILED'} in {results['seconds']} s: "
        f"{out / 'results.json'}, {out / 'report.md'}")
    return 0 if results["passed"] else 1


# ---------------------------------------------------------------- command line

def _int_list(text: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"comma-separated integers, not {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"positive integers, not {text!r}")
    return values


def _name_list(choices: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        values = [t.strip() for t in text.split(",") if t.strip()]
        wrong = [v for v in values if v not in choices]
        if not values or wrong:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)}, not {text!r}")
        return values
    return parse


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = top.add_subparsers(dest="command", required=True)
    prep = commands.add_parser("prepare", help="make the carried bundle (CPU machine)")
    prep.add_argument("bundle", type=Path)
    prep.add_argument("--presets", type=_name_list(PRESETS), default=list(PRESETS), dest="preset_list")
    prep.add_argument("--samples", type=int, default=4, help="validation samples per preset (default 4)")
    prep.add_argument("--seed", type=int, default=0, help="seed of vit_b's random weights (default 0)")
    prep.add_argument("--data", type=Path, default=None, help="data root with qata-cov19/ (default: ../shared/data)")
    prep.add_argument("--force", action="store_true", help="replace an existing bundle")

    for name, helptext in (("run", "measure on the device"), ("_compiled", argparse.SUPPRESS)):
        sub = commands.add_parser(name, help=helptext)
        sub.add_argument("bundle", type=Path)
        if name == "run":
            sub.add_argument("out", type=Path)
            sub.add_argument("--presets", type=_name_list(PRESETS), default=list(PRESETS), dest="preset_list")
            sub.add_argument("--variants", type=_name_list(EAGER_VARIANTS + (COMPILE_VARIANT,)),
                             default=list(EAGER_VARIANTS + (COMPILE_VARIANT,)), dest="variant_list")
            sub.add_argument("--compile-timeout", type=int, default=150, help="cap of each torch.compile run, s")
            sub.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
        else:
            sub.add_argument("preset")
            sub.add_argument("result")
        sub.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for a smoke run")
        sub.add_argument("--iters", type=int, default=20, help="timed iterations per batch size (default 20)")
        sub.add_argument("--warmup", type=int, default=5, help="untimed iterations first (default 5)")
        sub.add_argument("--batches", type=_int_list, default=[1, 4], dest="batch_list",
                         help="batch sizes timed (default 1,4)")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "prepare":
            if args.samples < 1:
                raise CheckError("--samples must be at least 1")
            prepare(args.bundle, args.preset_list, args.samples, args.seed, args.force, args.data)
            return 0
        preflight(args.bundle)
        if args.command == "_compiled":
            return compiled_child(args)
        if args.iters < 1 or args.warmup < 0:
            raise CheckError("--iters must be at least 1 and --warmup at least 0")
        return run(args.bundle, args.out, args)
    except CheckError as exc:
        print(f"device_check: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # LGAError and friends from the package: one line too
        from lga_export.errors import LGAError

        if isinstance(exc, LGAError):
            print(f"device_check: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
