"""Build one TensorRT engine per LGA graph from a verified ONNX export folder.

Composes Polygraphy's lazy loaders (NetworkFromOnnxPath -> CreateConfig -> EngineBytesFromNetwork).
Networks are strongly typed: FP32 engines come from the FP32 graphs, FP16 engines from the
FP16 graphs, so the precision lives in the ONNX (TensorRT 11 has no BuilderFlag.FP16).
The export is opened with `lga_export.artifact.open_export` (every file's sha256, the model
digest) before minutes are spent on a build. The engine folder runs on its own: the export's
tokenizer and self-check sample are copied into it (once, atomically, verified), and each
engine's manifest lists the sha256 of the engine, its layer reports, the tokenizer files and
the check sample. Every file is written atomically
and the manifest last, so an interrupted build leaves nothing that loads as an engine.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lga_export import __version__
from lga_export.artifact import ENGINE_FORMAT, TOKENIZER_DIR, ExportArtifact, file_digests, open_export
from lga_export.errors import LGAError
from lga_export.contract import GraphSpec, graph_specs
from lga_export.fileio import atomic_dir, atomic_file, refuse_overwrite, sha256_file
from lga_export.trt_engines.manifest import EngineFiles, source_record
from lga_export.trt_engines.profiles import Profile, ProfileBounds, engine_profile, profile_to_json

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


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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
        text = str(exc).strip()
        raise LGAError(f"TensorRT could not build {onnx_path.name}: "
                       f"{text.splitlines()[-1] if text else type(exc).__name__}") from exc


def _layer_reports(engine_bytes: bytes, profile: Profile) -> list[dict[str, Any]]:
    from lga_export.trt_engines._trt import import_tensorrt
    from lga_export.trt_engines.layers import engine_information, layer_report

    trt = import_tensorrt()
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    if engine is None:
        raise LGAError("TensorRT built an engine it cannot deserialize; see the TensorRT log above")
    return layer_report(engine_information(engine, profile))


def engine_manifest(spec: GraphSpec, precision: str, profile: Profile, bounds: ProfileBounds,
                    environment: dict[str, Any], source: dict[str, Any], export_manifest: dict[str, Any],
                    files: dict[str, str], engine_file: str, seconds: float,
                    counts: dict[str, int]) -> dict[str, Any]:
    """Everything needed to verify this engine and decide later whether it may be loaded.

    `files`: relative path -> sha256 of every file of the engine (engine, layer reports,
    tokenizer files, the export's check sample); `source`: `manifest.source_record()` of the ONNX it was built from.
    """
    return {
        "format": ENGINE_FORMAT, "graph": spec.name, "precision": precision, "engine": engine_file,
        "files": dict(sorted(files.items())), "model_digest": export_manifest["model_digest"],
        "config": export_manifest["config"], "environment": environment,
        "profile": profile_to_json(profile), "bounds": bounds.as_dict(), "strongly_typed": True,
        "source": source, "tokenizer": TOKENIZER_DIR,
        **({"check_sample": export_manifest["check_sample"]} if export_manifest.get("check_sample") else {}),
        "built_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(seconds, 2), "lga_export_version": __version__,
        "layer_precisions": counts, "input_names": spec.input_names, "output_names": spec.output_names,
    }


def _check_sample_digest(export: ExportArtifact) -> dict[str, str]:
    """The export's check sample as its (verified) manifest lists it: {file: sha256}, or {} for an
    export without one (the engines then self-check on the built-in sample)."""
    from lga_export.runtime.check_sample import export_check

    if export_check(export) is None:  # also refuses a malformed check_sample entry
        return {}
    name = export.manifest["check_sample"]["file"]
    return {name: export.manifest["files"][name]}


def check_check_sample(export: ExportArtifact, wanted: dict[str, str], out_dir: Path, force: bool) -> bool:
    """True when the export's check sample (`wanted`: `_check_sample_digest`) must be copied into the
    engine folder; the tokenizer's rule: an identical copy is kept, a different one is refused
    without `force`."""
    if not wanted:
        return False
    [(name, digest)] = wanted.items()
    target = out_dir / name
    if target.is_file() and sha256_file(target) == digest:
        return False
    if target.exists() and not force:
        raise LGAError(f"{target} is another check sample than {export.folder}'s; pass --force to replace it "
                       f"(engines built with the old one are then refused until rebuilt), or give another --out")
    return True


def copy_check_sample(export: ExportArtifact, wanted: dict[str, str], out_dir: Path, force: bool) -> None:
    """Copy the export's check sample (`wanted`: {file: sha256}) into the engine folder atomically,
    verified against the export's sha256."""
    import shutil

    [(name, digest)] = wanted.items()
    with atomic_file(out_dir / name, force=force) as tmp:
        shutil.copyfile(export.folder / name, tmp)
        if sha256_file(tmp) != digest:
            raise LGAError(f"{export.folder / name} changed while it was copied; run lga-export trt again")


def _tokenizer_digests(export: ExportArtifact) -> dict[str, str]:
    """The export's tokenizer files as its (verified) manifest lists them: relative path -> sha256."""
    prefix = f"{TOKENIZER_DIR}/"
    found = {k: v for k, v in export.manifest.get("files", {}).items() if k.startswith(prefix)}
    if not found:
        raise LGAError(f"{export.folder} has no {TOKENIZER_DIR}/ files in its manifest; the engines could not "
                       f"tokenise on their own - re-export with lga-export onnx --force")
    return found


def _engine_folder_tokenizer(out_dir: Path) -> dict[str, str]:
    folder = out_dir / TOKENIZER_DIR
    return {f"{TOKENIZER_DIR}/{k}": v for k, v in file_digests(folder).items()} if folder.is_dir() else {}


def check_tokenizer(export: ExportArtifact, out_dir: Path, force: bool) -> bool:
    """True when the export's tokenizer must be copied into the engine folder. An identical copy
    already there is kept (engines of both precisions share it); a different one is refused
    without `force`, since the engines already there were listed with it."""
    wanted, present = _tokenizer_digests(export), _engine_folder_tokenizer(out_dir)
    if present == wanted:
        return False
    if (out_dir / TOKENIZER_DIR).exists() and not force:
        raise LGAError(f"{out_dir / TOKENIZER_DIR} holds another tokenizer than {export.folder}'s; pass --force to "
                       f"replace it (engines built with the old one are then refused until rebuilt), or give "
                       f"another --out")
    return True


def copy_tokenizer(export: ExportArtifact, out_dir: Path, force: bool) -> dict[str, str]:
    """Copy the export's tokenizer folder into the engine folder atomically (a reader never sees
    half a tokenizer); return its files' digests as listed in the export manifest."""
    import shutil

    wanted = _tokenizer_digests(export)
    with atomic_dir(out_dir / TOKENIZER_DIR, force=force) as tmp:
        shutil.copytree(export.tokenizer_dir, tmp, dirs_exist_ok=True)
        copied = {f"{TOKENIZER_DIR}/{k}": v for k, v in file_digests(tmp).items()}
        if copied != wanted:
            raise LGAError(f"{export.tokenizer_dir} changed while it was copied; run lga-export trt again")
    return wanted


def _write_engine_files(files: EngineFiles, engine_bytes: bytes, layers_json: str, layers_md: str,
                        manifest: dict[str, Any], force: bool) -> None:
    """Stage all four files, then rename them in one go with the manifest last. An interruption
    leaves no new file; with `force` the old manifest goes first, so an old engine left behind
    is refused (no manifest) instead of being vouched for by a stale one."""
    if force:
        files.manifest.unlink(missing_ok=True)
    with contextlib.ExitStack() as stack:  # exits in reverse: engine renamed first, manifest last
        staged = {path: stack.enter_context(atomic_file(path, force=force))
                  for path in (files.manifest, files.layers_md, files.layers_json, files.engine)}
        staged[files.engine].write_bytes(engine_bytes)
        staged[files.layers_json].write_bytes(layers_json.encode())
        staged[files.layers_md].write_bytes(layers_md.encode())
        staged[files.manifest].write_bytes((json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())


def build_engines(onnx_dir: Path, out_dir: Path | None = None, *, fp16: bool = False, min_batch: int = 1,
                  opt_batch: int | None = None, max_batch: int = 4, max_text_length: int | None = None,
                  opt_text_length: int | None = None, workspace_gb: float | None = None,
                  timing_cache: Path | None = None, force: bool = False,
                  model_digest: str | None = None) -> list[BuiltEngine]:
    """Build the text and image engines of one precision; refuse to overwrite without `force`.

    `model_digest`: refuse an export of another model (the caller holds the model).
    """
    from lga_export.trt_engines import layers
    from lga_export.trt_engines._trt import current_environment, require_tensorrt_and_gpu

    require_tensorrt_and_gpu()
    onnx_dir = Path(onnx_dir)
    out_dir = Path(out_dir) if out_dir is not None else default_engine_dir(onnx_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise LGAError(f"{out_dir} is a file, not a folder; give another --out")
    precision = precision_of(fp16)
    export = open_export(onnx_dir, model_digest)
    specs = graph_specs(export.config)
    sources = {spec.name: export.graph(spec.name, precision) for spec in specs}
    records = {spec.name: source_record(export, spec.name, precision) for spec in specs}
    bounds = ProfileBounds.for_config(export.config, min_batch, opt_batch, max_batch, max_text_length,
                                      opt_text_length)
    for spec in specs:  # refuse before spending minutes on a build
        for path in EngineFiles(out_dir, spec.name, precision).all():
            refuse_overwrite(path, force)
    copy_needed = check_tokenizer(export, out_dir, force)
    check_sample = _check_sample_digest(export)
    sample_copy_needed = check_check_sample(export, check_sample, out_dir, force)
    environment = current_environment()
    if timing_cache is not None:  # Polygraphy locks and writes it after the first build
        Path(timing_cache).parent.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = copy_tokenizer(export, out_dir, force) if copy_needed else _tokenizer_digests(export)
    if sample_copy_needed:
        copy_check_sample(export, check_sample, out_dir, force)

    built = []
    for spec in specs:
        files = EngineFiles(out_dir, spec.name, precision)
        profile = engine_profile(spec, bounds)
        start = time.perf_counter()
        engine_bytes = _build_bytes(sources[spec.name], profile, workspace_gb, timing_cache)
        seconds = time.perf_counter() - start
        rows = _layer_reports(engine_bytes, profile)
        counts = layers.precision_counts(rows)
        layers_json = json.dumps(rows, indent=2) + "\n"
        layers_md = layers.summary_markdown(f"{spec.name} {precision} engine: layers per precision", rows)
        digests = {files.engine.name: _sha256(engine_bytes), files.layers_json.name: _sha256(layers_json.encode()),
                   files.layers_md.name: _sha256(layers_md.encode()), **tokenizer, **check_sample}
        manifest = engine_manifest(spec, precision, profile, bounds, environment,
                                   records[spec.name], export.manifest, digests,
                                   files.engine.name, seconds, counts)
        _write_engine_files(files, engine_bytes, layers_json, layers_md, manifest, force)
        built.append(BuiltEngine(spec.name, precision, files, seconds, counts))
    return built
