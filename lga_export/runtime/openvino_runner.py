"""OpenVINO backend (`ov`) over an export folder: reads the exported FP32 ONNX graphs directly.

Precisions: fp32; bf16 through OpenVINO's `INFERENCE_PRECISION_HINT` (the graphs stay FP32 on
disk; the CPU plugin runs MatMuls, convolutions and most element-wise work in BF16 where the
CPU has native BF16 - avx512_bf16 or amx_bf16); int8: the OpenVINO IR of `lga-export onnx
--int8 ov` for the image graph, the FP32 text graph. The image graph is compiled with static
shapes per batch size (see `_batch_only`). On a CPU without BF16 the runner runs
FP32 and says so: `describe()` reports what was asked, what the compiled model really uses
(its `INFERENCE_PRECISION_HINT`, execution devices, the runtime precision of its compute
layers) and why it differs. Latency settings: `PERFORMANCE_HINT` LATENCY and
`INFERENCE_NUM_THREADS` from the caller. Compiled models are cached in a per-user folder
(never inside the export folder), one folder per compile keyed by everything that changes what
is built (`cache_key`: OpenVINO's own cache key ignores the precision hint). Imports neither torch nor
transformers.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from lga_export.config import LGAConfig
from lga_export.errors import LGAError, one_line
from lga_export.runtime import compile_cache
from lga_export.runtime.base import EXPORT, OPENVINO_IR, Runner, RunnerDescription
from lga_export.runtime.host import cache_root, cpu_identity, ensure_cache_dir, prune_cache, touch_cache_entry

# Precision name -> OpenVINO's INFERENCE_PRECISION_HINT value (int8: what the INT8 IR left
# unquantised runs in FP32).
HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
MAX_STATIC_BATCHES = 2  # static-shape compilations per graph (each holds its own weights); then dynamic
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
COMPUTE_LAYERS = ("FullyConnected", "MatMul", "Convolution", "Deconvolution", "GroupConvolution")


def openvino():
    try:
        import openvino as ov
    except ImportError as exc:
        raise LGAError("OpenVINO is not installed; pip install openvino") from exc
    return ov


def cpu_bf16_support(core: Any = None) -> dict[str, Any]:
    """Whether this CPU computes BF16 natively: its flags, and OpenVINO's own capability list."""
    _, flags = cpu_identity()
    native = [f for f in BF16_FLAGS if f in flags]
    capabilities: list[str] = []
    if core is not None:
        try:
            capabilities = [str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")]
        except Exception:  # noqa: BLE001 - an older plugin without the property: trust the flags
            capabilities = []
    supported = bool(native) and (not capabilities or "BF16" in capabilities)
    return {"supported": supported, "cpu_flags": native, "openvino_capabilities": capabilities}


def _text(value: Any) -> Any:
    """An OpenVINO property value as plain JSON (types and enums as their names)."""
    if isinstance(value, (list, tuple)):
        return [_text(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if hasattr(value, "get_type_name"):  # ov.Type: 'f32', 'bf16', ...
        return value.get_type_name()
    name = getattr(value, "name", None)
    return name if isinstance(name, str) and name else str(value)


def _batch_only(spec) -> bool:
    """Whether batch is the graph's only dynamic axis (the image graph): such a graph is compiled
    per batch size, with static shapes. OpenVINO's CPU plugin plans memory ahead only for static
    shapes: vit_b's image graph at batch 1 took 1.9 GB instead of 8.3 GB and ran 9% faster in FP32,
    15% in INT8 (2-core Xeon, 2026-11-30). The text graph's sequence length changes with every
    batch of reports, so it stays dynamic."""
    from lga_export.contract import BATCH

    return all(set(t.dynamic_axes.values()) <= {BATCH} for t in spec.inputs)


def with_batch(model: Any, batch: int | None) -> None:
    """Fix (an int) or free (None) the first axis of every input of an ov.Model, in place."""
    ov = openvino()
    model.reshape({port.get_any_name(): ov.PartialShape([ov.Dimension(-1 if batch is None else batch),
                                                         *list(port.get_partial_shape())[1:]])
                   for port in model.inputs})


class OpenVinoRunner(Runner):
    """`graphs`: graph name -> FP32 ONNX file of a verified export folder."""

    backend = "ov"
    aliases = ("openvino",)
    precisions = ("fp32", "bf16", "int8")
    sources = (EXPORT,)  # the FP32 ONNX graphs, and at int8 the OpenVINO IR inside the export
    int8_format = OPENVINO_IR  # lga_image.int8.xml/.bin
    int8_graph = "an OpenVINO IR"
    int8_methods = ("ov",)
    thread_option = "threads"  # INFERENCE_NUM_THREADS
    self_checked = ("bf16", "int8")  # checked against ov-fp32 on first use per machine (self_check.py)

    @classmethod
    def stored_precision(cls, precision: str) -> str:
        """fp32 and bf16 read the FP32 graphs (BF16 is an inference hint), int8 the INT8 IR."""
        return "int8" if precision == "int8" else "fp32"

    @classmethod
    def unavailable(cls, precision: str, device: str) -> str | None:
        """OpenVINO runs here on the CPU; BF16 only where the CPU computes it natively (elsewhere the
        runner would fall back to FP32, and a 'bf16' row of FP32 figures would mislead)."""
        try:
            import openvino  # noqa: F401
        except Exception as exc:  # noqa: BLE001 - ImportError or a broken install: both mean "not here"
            return f"OpenVINO is not importable ({type(exc).__name__}: {exc}); pip install openvino"
        if not device.startswith("cpu"):
            return f"the OpenVINO backend runs on the CPU, and this run is on {device}"
        if precision == "bf16" and not cpu_bf16_support()["supported"]:
            return "this CPU has no native BF16 (no avx512_bf16 or amx_bf16 flag): OpenVINO would run FP32"
        return None

    def __init__(self, config: LGAConfig, graphs: dict[str, Path], precision: str = "fp32", *,
                 threads: int | None = None, device: str = "CPU", tokenizer_dir: Path | None = None,
                 cache_dir: Path | str | bool | None = None, graph_digests: dict[str, str] | None = None,
                 performance_hint: str = "LATENCY") -> None:
        """`cache_dir`: compiled-model cache (None: the per-user default, False: none);
        `graph_digests`: graph name -> sha256 of its files (the cache key; no cache without it)."""
        super().__init__(config, precision)
        self.graphs = {name: Path(path) for name, path in graphs.items()}
        self.threads = threads
        self.device = device.upper()
        self.tokenizer_dir = tokenizer_dir
        self.cache_dir = cache_dir
        self.graph_digests = dict(graph_digests or {})
        self.performance_hint = performance_hint
        self.static_batch = {name: _batch_only(spec) for name, spec in self.specs.items()}
        self.core: Any = None
        self.compiled: dict[str, dict] = {}  # graph -> batch (None: dynamic) -> (model, request, outputs)
        self.used: dict[str, dict[str, Any]] = {}
        self.startup: dict[str, dict[str, Any]] = {}
        self.cache_folders: dict[str, Path] = {}  # graph -> cache folder of its first compile
        self.cache_status: dict[str, str] = {}  # graph -> 'hit', 'written' or 'rebuilt' (first compile)
        self.cache_rebuilt: dict[str, str] = {}  # graph -> why a cache folder of it was discarded and rebuilt
        self.bf16: dict[str, Any] | None = None
        self.fallback: str | None = None
        self.reference_digests: dict[str, str] = {}  # graph -> sha256 of the export's FP32 graph (self-check key)

    @classmethod
    def from_source(cls, source: Any, *, precision: str = "fp32", device: str = "cpu",
                    model_digest: str | None = None, **options: Any) -> "OpenVinoRunner":
        """An export folder (path or ExportArtifact), verified before anything is loaded. OpenVINO
        reads the FP32 graphs at fp32 and bf16 (BF16 is an inference hint), the INT8 IR at int8."""
        from lga_export.artifact import export_of

        artifact = export_of(source, model_digest, "OpenVINO")
        if not device.lower().startswith("cpu"):
            raise LGAError(f"the OpenVINO backend runs on the CPU here, not {device}; use --device cpu")
        from lga_export.contract import specs_by_name

        stored = cls.stored_precision(precision)
        if precision == "int8" and artifact.int8_format != cls.int8_format:
            from lga_export.runtime.registry import int8_backend, runner_class

            owner = int8_backend(artifact) if artifact.int8_format else None
            found = (f"holds {runner_class(owner).int8_graph} INT8 graph" if owner else
                     "has no INT8 graphs" if artifact.int8_format is None else "holds another backend's INT8 graph")
            raise LGAError(f"{artifact.folder} {found}; OpenVINO runs the INT8 graph of lga-export onnx --int8 ov "
                           f"(re-export with it{', or use --backend ' + owner if owner else ''})")
        names = list(specs_by_name(artifact.config))
        graphs = {name: artifact.graph(name, stored) for name in names}
        digests = {name: artifact.graph_digest(name, stored) for name in names}
        runner = cls(artifact.config, graphs, precision, tokenizer_dir=artifact.tokenizer_dir, graph_digests=digests,
                     **options)
        runner._model_digest = artifact.model_digest
        runner.reference_digests = {name: artifact.graph_digest(name, "fp32") for name in names}
        runner.take_check_sample(artifact)
        return runner

    def self_check_identity(self) -> dict[str, Any] | None:
        """The graphs (at this precision and the FP32 reference), OpenVINO's version, the device and
        the compile properties that change the numbers (precision and performance hints; not the
        thread count), and the CPU. None for bf16 on a CPU without native BF16: it runs FP32."""
        if self.precision == "bf16" and not cpu_bf16_support()["supported"]:
            return None
        model, flags = cpu_identity()
        config = self.compile_config()
        return {"model_digest": self.model_digest, "graphs": dict(sorted(self.graph_digests.items())),
                "reference_graphs": dict(sorted(self.reference_digests.items())),
                "runtime": f"openvino {openvino().get_version()}", "device": self.device,
                "settings": {k: str(v) for k, v in sorted(config.items()) if k != "INFERENCE_NUM_THREADS"},
                "host": {"cpu": model, "cpu_flags": flags}}

    def self_check_root(self) -> Path | None:
        """Beside the compiled models: the runner's compile-cache folder (None without one)."""
        if self.cache_dir is False:
            return None
        return ensure_cache_dir(Path(self.cache_dir) if self.cache_dir else cache_root("openvino"))

    # -- loading ----------------------------------------------------------------------------

    def compile_config(self) -> dict[str, Any]:
        """The properties every graph is compiled with (after the BF16 check)."""
        hint = HINTS[self.precision] if self.fallback is None else HINTS["fp32"]
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": self.performance_hint}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = int(self.threads)
        return config

    def cache_key(self, graph: str, batch: int | None, config: dict[str, Any]) -> dict[str, Any] | None:
        """Everything that changes what OpenVINO builds for `graph`: its files' sha256, the batch
        (static size or dynamic), the device, the compile properties (precision hint, performance
        hint, threads), the OpenVINO version and the CPU. OpenVINO's own cache does not separate
        compiles by INFERENCE_PRECISION_HINT (2026.4.1: after an FP32 compile wrote its blob, a BF16
        compile with the same CACHE_DIR imported it and returned NaN logits, issue #20), so every
        distinct key gets a folder of its own. None when there is no cache for this graph."""
        digest = self.graph_digests.get(graph)
        if self.cache_dir is False or digest is None:
            return None
        model, flags = cpu_identity()
        return {"graph": graph, "graph_sha256": digest, "batch": batch, "device": self.device,
                "openvino": openvino().get_version(), "properties": {k: str(v) for k, v in sorted(config.items())},
                "cpu": model, "cpu_flags": flags}

    def cache_folder(self, graph: str, batch: int | None, config: dict[str, Any]) -> Path | None:
        """The compiled-model cache folder for one compile (see `cache_key`), private to the user."""
        key = self.cache_key(graph, batch, config)
        if key is None:
            return None
        root = ensure_cache_dir(Path(self.cache_dir) if self.cache_dir else cache_root("openvino"))
        if root is None:
            return None
        name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
        return ensure_cache_dir(root / f"{graph}-{name}", top=root)

    def _open_cache(self, graph: str, batch: int | None, config: dict[str, Any]) -> tuple[Path | None, str | None]:
        """(the verified or empty cache folder of this compile, or None; 'hit', 'absent' or 'rebuilt').
        A folder whose blobs do not match its record (or that has none) is wiped before OpenVINO
        could import anything from it (`compile_cache.admit`), so only sealed blobs are ever used."""
        folder = self.cache_folder(graph, batch, config)
        if folder is None:
            return None, None
        status, reason = compile_cache.admit(folder, self.cache_key(graph, batch, config))
        if status == "rebuilt":
            self.cache_rebuilt.setdefault(graph, str(reason))
            folder = self.cache_folder(graph, batch, config)  # wiped: created again, empty and private
        return folder, status

    def _close_cache(self, graph: str, batch: int | None, config: dict[str, Any], folder: Path, status: str,
                     before: set[Path]) -> None:
        """After a compile: seal the folder when OpenVINO wrote to it (the sha256 of its blobs),
        record what the cache did for the graph's first compile, prune the cache."""
        wrote = bool(set(folder.iterdir()) - before)
        if wrote or (status != "hit" and any(folder.iterdir())):
            compile_cache.seal(folder, self.cache_key(graph, batch, config))
        shown = {"hit": "written" if wrote else "hit", "absent": "written" if wrote else "not written"}.get(status, status)
        self.cache_status.setdefault(graph, shown)
        touch_cache_entry(folder)
        if wrote:
            prune_cache(folder.parent, keep=folder)

    def activate_impl(self) -> None:
        ov = openvino()
        self.core = core = ov.Core()
        if self.device not in core.available_devices:
            raise LGAError(f"OpenVINO has no {self.device} device here (available: {core.available_devices})")
        self.bf16 = cpu_bf16_support(core)
        if self.precision == "bf16":
            if not self.bf16["supported"]:
                self.fallback = ("this CPU has no native BF16 (no avx512_bf16 or amx_bf16 flag), so OpenVINO runs "
                                 "FP32 instead")
        for name in self.graphs:
            start = time.perf_counter()
            compiled = self._compile(name, 1 if self.static_batch[name] else None)
            self.used[name] = self._what_runs(compiled[0])
            self.startup[name] = {"ms": round((time.perf_counter() - start) * 1000, 1),
                                  "static_batch": self.static_batch[name],
                                  "compiled_cache": self.cache_status.get(name)}
            if name in self.cache_rebuilt:
                self.startup[name]["compiled_cache_rebuilt_because"] = self.cache_rebuilt[name]
        if self.precision == "bf16" and self.fallback is None:
            used = {info["inference_precision"] for info in self.used.values()}
            if used != {"bf16"}:
                self.fallback = f"OpenVINO compiled the graphs with inference precision {sorted(used)}, not bf16"

    def _compile(self, graph: str, batch: int | None) -> tuple[Any, Any, list[str]]:
        """(compiled model, infer request, output names) of `graph` at `batch` (None: dynamic),
        compiled on first use. The first MAX_STATIC_BATCHES sizes get static shapes; any other size
        runs on one dynamic-shape model, so varying batches (serve's dynamic batching) never
        recompile in a loop and memory stays bounded."""
        compiled_by_batch = self.compiled.setdefault(graph, {})
        if batch not in compiled_by_batch and batch is not None and \
                sum(size is not None for size in compiled_by_batch) >= MAX_STATIC_BATCHES:
            batch = None
        if batch in compiled_by_batch:
            return compiled_by_batch[batch]
        path = self.graphs[graph]
        config = self.compile_config()
        folder, status = self._open_cache(graph, batch, config)
        before = set(folder.iterdir()) if folder is not None else set()
        properties = {**config, "CACHE_DIR": str(folder)} if folder is not None else config
        if folder is not None:
            self.cache_folders.setdefault(graph, folder)
        try:
            model = self.core.read_model(str(path))
            if batch is not None:
                with_batch(model, batch)
            self._check_model(graph, path, model)
            compiled = self.core.compile_model(model, self.device, properties)
        except LGAError:
            raise
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError with long C++ traces
            raise LGAError(f"{path}: OpenVINO cannot compile it ({one_line(exc, 200, 'first')}); re-export with "
                           f"lga-export onnx --force") from None
        if folder is not None:
            self._close_cache(graph, batch, config, folder, str(status), before)
        entry = (compiled, compiled.create_infer_request(), [port.get_any_name() for port in compiled.outputs])
        compiled_by_batch[batch] = entry
        return entry

    def _check_model(self, graph: str, path: Path, model: Any) -> None:
        """The graph's I/O must be the spec's (names and static sizes), as for ONNX Runtime."""
        spec = self.specs[graph]
        found = {}
        for port in list(model.inputs) + list(model.outputs):
            shape = port.get_partial_shape()
            dims = [d.get_length() if d.is_static else None for d in shape] if shape.rank.is_static else None
            for tensor_name in port.get_names():
                found[tensor_name] = dims
        for tensor in spec.inputs + spec.outputs:
            dims = found.get(tensor.name)
            if dims is None or len(dims) != len(tensor.shape) or any(
                    isinstance(want, int) and got is not None and got != want for got, want in zip(dims, tensor.shape)):
                raise LGAError(f"{path}: {tensor.name} is {dims}, the {self.config.preset} config needs "
                               f"{tensor.shape}; the graph belongs to another model - re-export with --force")

    @staticmethod
    def _what_runs(compiled: Any) -> dict[str, Any]:
        """What the compiled model really uses: read back from it, not from what was asked."""
        info: dict[str, Any] = {}
        for key in ("INFERENCE_PRECISION_HINT", "EXECUTION_DEVICES", "PERFORMANCE_HINT", "INFERENCE_NUM_THREADS",
                    "NUM_STREAMS", "ENABLE_CPU_PINNING"):
            try:
                info[key.lower()] = _text(compiled.get_property(key))
            except Exception:  # noqa: BLE001 - not every plugin version has every property
                info[key.lower()] = None
        precision = str(info.get("inference_precision_hint") or "")
        info["inference_precision"] = {"bfloat16": "bf16", "bf16": "bf16", "float32": "fp32", "f32": "fp32",
                                       "float16": "fp16", "f16": "fp16"}.get(precision.lower(), precision)
        counts: Counter = Counter()
        try:
            for op in compiled.get_runtime_model().get_ordered_ops():
                rt = op.get_rt_info()
                layer = rt["layerType"].astype(str) if "layerType" in rt else ""
                if layer in COMPUTE_LAYERS:
                    counts[rt["runtimePrecision"].astype(str) if "runtimePrecision" in rt else "?"] += 1
        except Exception:  # noqa: BLE001 - the runtime model is diagnostics only
            pass
        info["compute_layers_by_precision"] = dict(counts)
        return info

    def deactivate_impl(self) -> None:
        self.compiled.clear()

    # -- running ----------------------------------------------------------------------------

    def infer_impl(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = next(iter(feeds.values())).shape[0] if self.static_batch[graph] else None
        _, request, outputs = self._compile(graph, batch)
        # Synchronous: OpenVINO reads the caller's arrays in place and the outputs are copied once, here.
        request.infer(feeds, share_inputs=True, share_outputs=True)
        return {name: np.array(request.get_output_tensor(i).data, copy=True) for i, name in enumerate(outputs)}

    def providers_in_use(self) -> dict[str, list[str]]:
        """Graph -> the devices OpenVINO really executes it on (as ONNX Runtime's runner reports)."""
        return {graph: list(info.get("execution_devices") or []) for graph, info in self.used.items()}

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        ov = openvino()
        used = sorted({v["inference_precision"] for v in self.used.values()})
        info.update(openvino=ov.get_version().split("-")[0], device=self.device, threads=self.threads,
                    requested={"inference_precision_hint": HINTS[self.precision],
                               "performance_hint": self.performance_hint, "inference_num_threads": self.threads},
                    inference_precision=used[0] if len(used) == 1 else used, fallback=self.fallback,
                    cpu_bf16=self.bf16 if self.bf16 is not None else cpu_bf16_support(),
                    compiled=self.used, graphs={name: path.name for name, path in self.graphs.items()},
                    compiled_model_cache=next((str(f.parent) for f in self.cache_folders.values() if f), None),
                    startup=self.startup)
        return info

    def description(self) -> RunnerDescription:
        in_use = "fp32" if self.fallback else self.precision
        return self.with_self_check(RunnerDescription(
            self.backend, self.precision, in_use, self.device.lower(), on_cpu=True, providers=self.providers_in_use(),
            threads=self.threads, fallback=self.fallback, settings=self.settings_line()))

    def settings_line(self) -> str:
        """What OpenVINO was asked and really used (precision, layers, BF16, compile), for lga-bench's report."""
        info = self.describe()
        startup = ", ".join(f"{g} {v['ms']:.0f} ms ({v['compiled_cache'] or 'no cache'})"
                            for g, v in self.startup.items())
        layers = {g: v.get("compute_layers_by_precision") for g, v in self.used.items()}
        return (f"OpenVINO {info['openvino']} on {self.device}, asked {info['requested']}, inference precision used "
                f"{info['inference_precision']}{' for the layers left unquantised' if self.precision == 'int8' else ''}"
                f"{' - ' + self.fallback if self.fallback else ''}; compute layers by runtime precision {layers}; "
                f"CPU BF16 {info['cpu_bf16'].get('cpu_flags') or 'none'}; compile: {startup}")
