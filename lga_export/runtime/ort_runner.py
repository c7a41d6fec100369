"""ONNX Runtime backend over an export folder (FP32, FP16 or INT8 graphs).

onnxruntime-gpu silently falls back to the CPU when CUDA or TensorRT libraries are missing,
so the runner reports the providers each session really uses, and refuses a requested
provider that is not in use. Imports neither torch nor transformers.

Session options are chosen for latency on the CPU (issue #12, measured on a 2-core machine):
intra-op threads do not spin (`session.intra_op.allow_spinning` = 0: a spinning pool competes
with the Python work between runs - the pre/post-processing and the other graph - and makes end
to end slower than the sum of the graphs), graph optimisation level ORT_ENABLE_ALL, and an
optimised-model cache outside the export folder (see `OPTIMIZED_CACHE`). `describe()` records
all of them.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from lga_export.config import LGAConfig
from lga_export.errors import LGAError, one_line
from lga_export.runtime.base import EXPORT, ONNX, Runner, RunnerDescription
from lga_export.runtime import compile_cache
from lga_export.runtime.host import cache_root, cpu_identity, ensure_cache_dir, prune_cache, touch_cache_entry


def onnxruntime():
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise LGAError('ONNX Runtime is not installed; pip install "lga-export[cpu]" (or "lga-export[gpu]" on a '
                       'CUDA machine, never both)') from exc
    return ort


OPTIMIZATION_LEVELS = ("disabled", "basic", "extended", "all")
DEFAULT_OPTIMIZATION = "all"
SPINNING = False
# Reuse ONNX Runtime's optimised graph across runs: only for the CPU provider, where it was
# measured to cut session start-up (see `optimized_model_path`).
OPTIMIZED_CACHE = True
OPTIMIZED_FILE = "model.onnx"  # the optimised graph inside its cache entry (no external data)


CUDA = "CUDAExecutionProvider"
ProviderEntry = str | tuple[str, dict[str, str]]  # a provider name, or (name, options) as ORT takes them


def cuda_provider_options(device: str = "cuda") -> dict[str, str]:
    """The CUDA provider's options: the GPU of `cuda:N`, and TF32 off - ONNX Runtime's CUDA provider
    defaults to TF32 matmuls/convolutions, while the FP32 reference and FP32 engines run true FP32."""
    index = device.partition(":")[2] or "0"
    if not index.isdigit():
        raise LGAError(f"device {device!r}: expected cuda or cuda:N")
    return {"device_id": index, "use_tf32": "0"}


def with_cuda_options(providers: list[ProviderEntry], device: str = "cuda") -> list[ProviderEntry]:
    """`providers` with a bare CUDAExecutionProvider given its explicit options (entries that
    already carry options are kept as they are)."""
    return [(CUDA, cuda_provider_options(device)) if p == CUDA else p for p in providers]


def provider_names(providers: list[ProviderEntry]) -> list[str]:
    """The names of provider entries (a name, or a (name, options) pair)."""
    return [p if isinstance(p, str) else p[0] for p in providers]


def default_providers(device: str) -> list[ProviderEntry]:
    return with_cuda_options([CUDA, "CPUExecutionProvider"], device) if device.startswith("cuda") \
        else ["CPUExecutionProvider"]


# y = Identity(x), float[1], opset 17, IR 8: serialised here so the probe needs no `onnx` package
# (the lean [gpu] install has none).
_IDENTITY_ONNX = (b'\x08\x08\x12\x03lga:;\n\x10\n\x01x\x12\x01y"\x08Identity\x12\x05probeZ\x0f\n\x01x\x12\n\n'
                  b'\x08\x08\x01\x12\x04\n\x02\x08\x01b\x0f\n\x01y\x12\n\n\x08\x08\x01\x12\x04\n\x02\x08\x01B\x04\n\x00\x10\x11')


def cuda_provider_problem(ort, entry: Any = CUDA) -> str | None:
    """None when the CUDA provider loads; else one line saying so. onnxruntime-gpu lists its CUDA
    provider even when the CUDA/cuDNN libraries it needs are missing, then falls back to the CPU
    at session creation, so the only proof is a session that reports the provider in use."""
    if CUDA not in ort.get_available_providers():
        return (f"ONNX Runtime {ort.__version__} has no {CUDA} (the CPU onnxruntime wheel?); install "
                f"onnxruntime-gpu alone (pip uninstall onnxruntime; pip install \"lga-export[gpu]\")")
    options = ort.SessionOptions()
    options.log_severity_level = 4  # ORT's own multi-line load error is replaced by the line below
    try:
        used = ort.InferenceSession(_IDENTITY_ONNX, options,
                                    providers=[entry, "CPUExecutionProvider"]).get_providers()
    except Exception as exc:  # noqa: BLE001 - ORT raises its own types
        used, why = [], f" ({one_line(exc, 200, 'first')})"
    else:
        why = ""
    if CUDA in used:
        return None
    return (f"ONNX Runtime {ort.__version__} lists {CUDA} but cannot load it{why}, so a session runs without "
            f"it; install the CUDA 13 and cuDNN 9 libraries it needs (pip install \"lga-export[gpu]\" brings "
            f"them) or leave ort out of the GPU backends")


class OnnxRuntimeRunner(Runner):
    """`graphs`: graph name -> ONNX file (from a verified export folder, or staged by the exporter)."""

    backend = "ort"
    aliases = ("onnxruntime",)
    precisions = ("fp32", "fp16", "int8")
    sources = (EXPORT,)
    int8_format = ONNX  # lga_image.int8.onnx
    int8_graph = "ONNX Runtime's"
    int8_methods = ("dynamic", "static")
    thread_option = "threads"
    self_checked = ("fp16", "int8")  # checked against ort-fp32 on first use per machine (self_check.py)

    def __init__(self, config: LGAConfig, graphs: dict[str, Path], precision: str = "fp32", *,
                 providers: list[str] | None = None, threads: int | None = None, low_memory: bool = False,
                 tokenizer_dir: Path | None = None, spinning: bool = SPINNING,
                 optimization: str = DEFAULT_OPTIMIZATION, cache_dir: Path | str | bool | None = None,
                 graph_digests: dict[str, str] | None = None) -> None:
        """`spinning`: let idle intra-op threads spin (ORT's default; slower end to end here).
        `optimization`: graph optimisation level (disabled, basic, extended, all).
        `cache_dir`: where optimised graphs are cached (None: the per-user default, False: no
        cache); `graph_digests`: graph name -> sha256 of its file (from the manifest), the cache key."""
        super().__init__(config, precision)
        if optimization not in OPTIMIZATION_LEVELS:
            raise LGAError(f"unknown graph optimisation level {optimization!r}; choose one of "
                           f"{', '.join(OPTIMIZATION_LEVELS)}")
        self.graphs = {name: Path(path) for name, path in graphs.items()}
        self.requested = with_cuda_options(providers or default_providers("cpu"))  # never a bare CUDA (TF32 on)
        self.threads = threads
        self.low_memory = low_memory  # no CPU arena: memory goes back after each run (validation)
        self.tokenizer_dir = tokenizer_dir
        self.spinning = spinning
        self.optimization = optimization
        self.cache_dir = cache_dir
        self.graph_digests = dict(graph_digests or {})
        self.sessions: dict[str, Any] = {}
        self.startup: dict[str, dict[str, Any]] = {}
        self.cache_rebuilt: dict[str, str] = {}  # graph -> why its cache entry was discarded and rebuilt
        self.reference_digests: dict[str, str] = {}  # graph -> sha256 of the export's FP32 graph (self-check key)

    @classmethod
    def from_source(cls, source: Any, *, precision: str = "fp32", device: str = "cpu",
                    model_digest: str | None = None, providers: list[str] | None = None,
                    **options: Any) -> "OnnxRuntimeRunner":
        """An export folder (path or ExportArtifact), verified before anything is loaded."""
        from lga_export.artifact import export_of

        artifact = export_of(source, model_digest, "ONNX Runtime")
        if precision == "int8" and artifact.int8_format not in (None, cls.int8_format):
            from lga_export.runtime.registry import int8_backend, runner_class

            owner = int8_backend(artifact)
            graph = runner_class(owner).int8_graph if owner else artifact.int8_format
            raise LGAError(f"{artifact.folder}: its INT8 image graph is {graph}, not ONNX Runtime's; run it with "
                           f"--backend {owner}, or re-export with --int8 dynamic for ONNX Runtime")
        graphs = {name: artifact.graph(name, precision) for name in cls.graph_names(artifact.config)}
        digests = {name: artifact.graph_digest(name, precision) for name in graphs}
        providers = with_cuda_options(providers, device) if providers else default_providers(device)
        runner = cls(artifact.config, graphs, precision, providers=providers,
                     tokenizer_dir=artifact.tokenizer_dir, graph_digests=digests, **options)
        runner._model_digest = artifact.model_digest
        runner.reference_digests = {name: artifact.graph_digest(name, "fp32") for name in graphs}
        runner.take_check_sample(artifact)
        return runner

    def self_check_identity(self) -> dict[str, Any] | None:
        """The graphs (at this precision and the FP32 reference), ONNX Runtime's version, the
        providers and optimisation level, and the machine: the CPU, or the GPU of a CUDA provider."""
        from lga_export.runtime.host import gpu_identity

        cuda = [p for p in self.requested if not isinstance(p, str) and p[0] == CUDA]
        if cuda:
            host = gpu_identity(int(cuda[0][1].get("device_id", 0)))
        else:
            model, flags = cpu_identity()
            host = {"cpu": model, "cpu_flags": flags}
        return {"model_digest": self.model_digest, "graphs": dict(sorted(self.graph_digests.items())),
                "reference_graphs": dict(sorted(self.reference_digests.items())),
                "runtime": f"onnxruntime {onnxruntime().__version__}", "providers": list(self.requested),
                "settings": {"optimization": self.optimization}, "host": host}

    def self_check_root(self) -> Path | None:
        """Beside the optimised graphs: the runner's cache folder (None without one)."""
        if self.cache_dir is False:
            return None
        return ensure_cache_dir(Path(self.cache_dir) if self.cache_dir else cache_root("onnxruntime"))

    @classmethod
    def unavailable(cls, precision: str, device: str) -> str | None:
        try:
            onnxruntime()
        except LGAError as exc:
            return str(exc)
        return None

    @classmethod
    def options_for(cls, precision: str, *, threads: int | None = None, providers: list[str] | None = None,
                    onnx_dir: Path | None = None) -> dict[str, Any]:
        """Threads and providers; INT8 on the CPU provider (dynamic-quantisation ops are CPU kernels)."""
        return {"providers": ["CPUExecutionProvider"] if precision == "int8" else providers, "threads": threads}

    @staticmethod
    def graph_names(config: LGAConfig) -> list[str]:
        from lga_export.contract import specs_by_name

        return list(specs_by_name(config))

    def activate_impl(self) -> None:
        ort = onnxruntime()
        available = ort.get_available_providers()
        missing = [p for p in provider_names(self.requested) if p not in available]
        if missing:
            raise LGAError(f"ONNX Runtime providers {missing} are not available here (available: {available}); "
                           f"install onnxruntime-gpu alone (pip uninstall onnxruntime) for CUDA/TensorRT providers")
        cuda = [p for p in self.requested if not isinstance(p, str) and p[0] == CUDA]
        problem = cuda_provider_problem(ort, cuda[0]) if cuda else None
        if problem:
            raise LGAError(problem)
        for name, path in self.graphs.items():
            start = time.perf_counter()
            session, cache = self._open_session(ort, name, path)
            self._check_session(name, path, session)
            self.sessions[name] = session
            self.startup[name] = {"ms": round((time.perf_counter() - start) * 1000, 1), "optimized_cache": cache}
            if name in self.cache_rebuilt:
                self.startup[name]["optimized_cache_rebuilt_because"] = self.cache_rebuilt[name]
        dropped = [p for p in provider_names(self.requested) if p != "CPUExecutionProvider"
                   and any(p not in s.get_providers() for s in self.sessions.values())]
        if dropped:
            raise LGAError(f"ONNX Runtime was asked for {dropped} but runs without it (providers in use: "
                           f"{self.providers_in_use()}); check the CUDA libraries, or ask for CPUExecutionProvider")

    def session_options(self, ort, optimized: bool = False):
        """The SessionOptions every session of this runner gets (`optimized`: the file is an
        already optimised graph from the cache, so ONNX Runtime need not optimise it again)."""
        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        if self.low_memory:
            options.enable_cpu_mem_arena = False
        spin = "1" if self.spinning else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", spin)
        options.add_session_config_entry("session.inter_op.allow_spinning", spin)
        level = "disabled" if optimized else self.optimization
        options.graph_optimization_level = {
            "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
        return options

    def session_settings(self) -> dict[str, Any]:
        """The latency-relevant session options, as recorded by describe() and lga-bench."""
        cached = [self.optimized_model_path(name) for name in self.graphs]
        return {"intra_op_threads": self.threads, "inter_op_threads": 1 if self.threads else None,
                "allow_spinning": self.spinning, "graph_optimization_level": self.optimization,
                "optimized_model_cache": str(cached[0].parent) if cached and cached[0] else None}

    def _open_session(self, ort, name: str, path: Path) -> tuple[Any, str | None]:
        """(session, what the optimised-model cache did: None, 'hit', 'written', 'rebuilt' (a bad
        entry was discarded; the reason is in `cache_rebuilt`) or 'unwritable'). A cached entry is
        used only after `compile_cache.admit` verified it against its record and this key."""
        entry = self.optimized_model_path(name)
        if entry is None:
            return self._plain_session(ort, path), None
        key = self.cache_key(name)
        status, reason = compile_cache.admit(entry, key)
        if status == "hit":
            try:
                session = ort.InferenceSession(str(entry / OPTIMIZED_FILE), self.session_options(ort, optimized=True),
                                               providers=self.requested)
                touch_cache_entry(entry)
                return session, "hit"
            except Exception as exc:  # noqa: BLE001 - verified but unloadable (another ORT build): rebuilt
                reason = f"ONNX Runtime cannot load it ({one_line(exc, 200, 'first')})"
                compile_cache.discard(entry, reason)
                status = "rebuilt"
        if reason:
            self.cache_rebuilt[name] = reason
        session, written = self._session_writing_cache(ort, path, entry, key)
        return session, (status if status == "rebuilt" else "written") if written else "unwritable"

    def _plain_session(self, ort, path: Path) -> Any:
        try:
            return ort.InferenceSession(str(path), self.session_options(ort), providers=self.requested)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own types for unreadable graphs
            raise LGAError(f"{path}: ONNX Runtime cannot load it ({one_line(exc, 200, 'first')}); re-export with "
                           f"lga-export onnx --force") from None

    def _session_writing_cache(self, ort, path: Path, entry: Path, key: dict[str, Any]) -> tuple[Any, bool]:
        """(session on the graph, whether its optimised model was saved as the sealed `entry`). The
        model is written into a private staging folder, sealed there, then renamed onto `entry`.
        An optimised graph over 2 GB cannot be saved: the session goes on without the cache."""
        import shutil

        from lga_export.fileio import staging_dir

        try:  # named by host and pid: a killed run's staging is removed by the next one
            staging = staging_dir(entry.parent, entry.name)
        except OSError:
            return self._plain_session(ort, path), False
        options = self.session_options(ort)
        options.optimized_model_filepath = str(staging / OPTIMIZED_FILE)
        try:
            session = ort.InferenceSession(str(path), options, providers=self.requested)
        except Exception:  # noqa: BLE001 - e.g. the >2 GB limit of one protobuf file
            shutil.rmtree(staging, ignore_errors=True)
            return self._plain_session(ort, path), False
        try:
            compile_cache.seal(staging, key)
            if compile_cache.publish(staging, entry):
                prune_cache(entry.parent, keep=entry)
            return session, True
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            return session, False

    def cache_key(self, graph: str) -> dict[str, Any]:
        """Everything that changes ONNX Runtime's optimised graph of `graph` (recorded in its entry)."""
        model, flags = cpu_identity()
        return {"graph": graph, "graph_sha256": self.graph_digests.get(graph), "onnxruntime": onnxruntime().__version__,
                "optimization": self.optimization, "providers": list(self.requested), "cpu": model, "cpu_flags": flags}

    def optimized_model_path(self, graph: str) -> Path | None:
        """The cache entry (a folder: the optimised model and its record, see `compile_cache`) of
        `graph`, or None when there is no cache for it.

        Keyed by the graph file's sha256 (from the verified manifest), the ONNX Runtime version,
        the optimisation level, the providers and the CPU (the ALL level writes CPU-specific
        layouts), so a changed graph, library or machine never meets a stale file. Only CPU
        sessions are cached: GPU providers' optimised graphs are not portable files."""
        if not OPTIMIZED_CACHE or self.cache_dir is False or self.low_memory:
            return None
        digest = self.graph_digests.get(graph)
        if digest is None or self.optimization == "disabled" or self.requested != ["CPUExecutionProvider"]:
            return None
        folder = ensure_cache_dir(Path(self.cache_dir) if self.cache_dir else cache_root("onnxruntime"))
        if folder is None:
            return None
        name = hashlib.sha256(json.dumps(self.cache_key(graph), sort_keys=True).encode()).hexdigest()[:32]
        return folder / f"{graph}.{name}"

    def _check_session(self, graph: str, path: Path, session: Any) -> None:
        """The graph's I/O must be the spec's (names and static sizes): catches files of another model."""
        spec = self.specs[graph]
        found = {v.name: v.shape for v in list(session.get_inputs()) + list(session.get_outputs())}
        for tensor in spec.inputs + spec.outputs:
            shape = found.get(tensor.name)
            if shape is None or len(shape) != len(tensor.shape) or any(
                    isinstance(want, int) and got != want for got, want in zip(shape, tensor.shape)):
                raise LGAError(f"{path}: {tensor.name} is {shape}, the {self.config.preset} config needs "
                               f"{tensor.shape}; the graph belongs to another model - re-export with --force")

    def deactivate_impl(self) -> None:
        self.sessions.clear()

    def infer_impl(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self.sessions[graph]
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, feeds)))

    def providers_in_use(self) -> dict[str, list[str]]:
        return {graph: session.get_providers() for graph, session in self.sessions.items()}

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(onnxruntime=onnxruntime().__version__, requested_providers=provider_names(self.requested),
                    provider_options={p[0]: p[1] for p in self.requested if not isinstance(p, str)},
                    providers_in_use=self.providers_in_use(), threads=self.threads,
                    graphs={name: path.name for name, path in self.graphs.items()},
                    session_options=self.session_settings(), startup=self.startup)
        return info

    def description(self) -> RunnerDescription:
        used = self.providers_in_use()
        on_cpu = bool(used) and all(providers == ["CPUExecutionProvider"] for providers in used.values())
        return self.with_self_check(RunnerDescription(self.backend, self.precision, self.precision,
                                                      "cpu" if on_cpu else "cuda", on_cpu=on_cpu, providers=used,
                                                      threads=self.threads, settings=self.settings_line()))

    def settings_line(self) -> str:
        """The session options and start-up this runner really used, for lga-bench's report."""
        o = self.session_settings()
        startup = ", ".join(f"{g} {v['ms']:.0f} ms ({v['optimized_cache'] or 'no cache'})"
                            for g, v in self.startup.items())
        return (f"intra-op threads {o['intra_op_threads']}, spinning {'on' if o['allow_spinning'] else 'off'}, graph "
                f"optimisation {o['graph_optimization_level']}, optimised-model cache "
                f"{o['optimized_model_cache'] or 'off'}; session start-up: {startup}")
