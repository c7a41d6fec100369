"""Build one TensorRT engine per LGA graph from an ONNX export folder.

Composes Polygraphy's lazy loaders (NetworkFromOnnxPath -> CreateConfig -> EngineBytesFromNetwork).
Networks are strongly typed: FP32 engines come from the FP32 graphs, FP16 engines from the
FP16 graphs, so the precision lives in the ONNX (TensorRT 11 has no BuilderFlag.FP16).
Every file is written atomically and the manifest last, so an interrupted build leaves
nothing that loads as an engine.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lga_export import __version__
from lga_export.errors import LGAError
from lga_export.export.specs import GraphSpec, graph_specs
from lga_export.fileio import atomic_file, refuse_overwrite
from lga_export.trt_engines.manifest import MANIFEST_VERSION, EngineFiles
from lga_export.trt_engines.profiles import Profile, ProfileBounds, engine_profile, profile_to_json
from lga_export.trt_engines.sources import export_config, onnx_digests, read_export_manifest, select_onnx

GIB = 1 << 30


@dataclass(frozen=True)
class BuiltEngine:
    graph: str
    precision: str
    files: EngineFiles
    seconds: float
    precision_counts: dict[str, int]


def default_engine_dir(onnx_dir: Path) -> Path:
    """A sibling of the export folder (`runs/onnx` -> `runs/onnx-trt`): re-exporting replaces the
    export folder as a whole, and engines are tied to this machine, so they live apart."""
    return Path(onnx_dir).parent / f"{Path(onnx_dir).name}-trt"


def precision_of(fp16: bool) -> str:
    return "fp16" if fp16 else "fp32"


def _build_bytes(onnx_path: Path, profile: Profile, workspace_gb: float | None,
                 timing_cache: Path | None) -> bytes:
    """Serialized engine for one ONNX graph (strongly typed, DETAILED profiling for the inspector)."""
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath
    from polygraphy.backend.trt import Profile as PolyProfile

    from lga_export.trt_engines._trt import import_tensorrt

    trt = import_tensorrt()
    poly_profile = PolyProfile()
    for name, (lo, opt, hi) in profile.items():
        poly_profile.add(name, min=lo, opt=opt, max=hi)
    pools = {trt.MemoryPoolType.WORKSPACE: int(workspace_gb * GIB)} if workspace_gb else None
    cache = str(timing_cache) if timing_cache else None
    config = CreateConfig(profiles=[poly_profile], memory_pool_limits=pools, load_timing_cache=cache,
                          profiling_verbosity=trt.ProfilingVerbosity.DETAILED)
    network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=True)
    try:
        return bytes(EngineBytesFromNetwork(network, config, save_timing_cache=cache)())
    except Exception as exc:  # Polygraphy reports parser / builder failures as PolygraphyException
        if isinstance(exc, LGAError):
            raise
        raise LGAError(f"TensorRT could not build {onnx_path.name}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__}") from exc


def _layer_reports(engine_bytes: bytes, profile: Profile) -> list[dict[str, Any]]:
    from lga_export.trt_engines._trt import import_tensorrt
    from lga_export.trt_engines.inspect import engine_information, layer_report

    trt = import_tensorrt()
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    if engine is None:
        raise LGAError("TensorRT built an engine it cannot deserialize; see the TensorRT log above")
    return layer_report(engine_information(engine, profile))


def engine_manifest(spec: GraphSpec, precision: str, profile: Profile, bounds: ProfileBounds,
                    environment: dict[str, Any], source: dict[str, Any], export_manifest: dict[str, Any],
                    onnx_dir: Path, seconds: float, counts: dict[str, int]) -> dict[str, Any]:
    """Everything needed to decide later whether this engine may be loaded."""
    return {
        "manifest_version": MANIFEST_VERSION, "graph": spec.name, "precision": precision,
        "environment": environment, "profile": profile_to_json(profile), "bounds": bounds.as_dict(),
        "source": {**source, "onnx_dir": str(Path(onnx_dir).resolve()), "opset": export_manifest.get("opset")},
        "config": export_manifest["config"], "strongly_typed": True,
        "built_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(seconds, 2), "lga_export_version": __version__,
        "layer_precisions": counts, "input_names": spec.input_names, "output_names": spec.output_names,
    }


def _write_engine_files(files: EngineFiles, engine_bytes: bytes, rows: list[dict[str, Any]],
                        manifest: dict[str, Any], force: bool) -> None:
    """Stage all four files, then rename them in one go with the manifest last. An interruption
    leaves no new file; with `force` the old manifest goes first, so an old engine left behind
    is refused (no manifest) instead of being vouched for by a stale one."""
    from lga_export.trt_engines.inspect import summary_markdown

    if force:
        files.manifest.unlink(missing_ok=True)
    with contextlib.ExitStack() as stack:  # exits in reverse: engine renamed first, manifest last
        staged = {path: stack.enter_context(atomic_file(path, force=force))
                  for path in (files.manifest, files.layers_md, files.layers_json, files.engine)}
        staged[files.engine].write_bytes(engine_bytes)
        staged[files.layers_json].write_text(json.dumps(rows, indent=2) + "\n")
        staged[files.layers_md].write_text(
            summary_markdown(f"{files.graph} {files.precision} engine: layers per precision", rows))
        staged[files.manifest].write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def build_engines(onnx_dir: Path, out_dir: Path | None = None, *, fp16: bool = False, min_batch: int = 1,
                  opt_batch: int | None = None, max_batch: int = 4, max_text_length: int | None = None,
                  workspace_gb: float | None = None, timing_cache: Path | None = None,
                  force: bool = False) -> list[BuiltEngine]:
    """Build the text and image engines of one precision; refuse to overwrite without `force`."""
    from lga_export.trt_engines._trt import current_environment, require_tensorrt_and_gpu
    from lga_export.trt_engines.inspect import precision_counts

    require_tensorrt_and_gpu()
    onnx_dir = Path(onnx_dir)
    out_dir = Path(out_dir) if out_dir is not None else default_engine_dir(onnx_dir)
    precision = precision_of(fp16)
    export_manifest = read_export_manifest(onnx_dir)
    config = export_config(export_manifest)
    specs = graph_specs(config)
    sources = select_onnx(onnx_dir, precision, specs, export_manifest)
    bounds = ProfileBounds.for_config(config, min_batch, opt_batch, max_batch, max_text_length)
    for spec in specs:  # refuse before spending minutes on a build
        for path in EngineFiles(out_dir, spec.name, precision).all():
            refuse_overwrite(path, force)
    environment = current_environment()
    if timing_cache is not None:  # Polygraphy locks and writes it after the first build
        Path(timing_cache).parent.mkdir(parents=True, exist_ok=True)

    built = []
    for spec in specs:
        files = EngineFiles(out_dir, spec.name, precision)
        profile = engine_profile(spec, bounds)
        digests = onnx_digests(sources[spec.name])
        start = time.perf_counter()
        engine_bytes = _build_bytes(sources[spec.name], profile, workspace_gb, timing_cache)
        seconds = time.perf_counter() - start
        rows = _layer_reports(engine_bytes, profile)
        counts = precision_counts(rows)
        manifest = engine_manifest(spec, precision, profile, bounds, environment, digests, export_manifest,
                                   onnx_dir, seconds, counts)
        _write_engine_files(files, engine_bytes, rows, manifest, force)
        built.append(BuiltEngine(spec.name, precision, files, seconds, counts))
    return built
