"""The only code that opens what claims to be a model on disk: export folders and engine folders.

Opening verifies before anything is loaded: every file the manifest lists must stay inside
the folder (no absolute path, no `..`, no symlink out), exist, and match its sha256; where
the caller holds a model, the recorded model digest (config + weights) must be that model's.
Each refusal is an LGAError naming the file and the fix (exit 2). Numpy-free and torch-free,
so the lean inference install can use it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, cast

from lga_export.config import LGAConfig
from lga_export.errors import LGAError
from lga_export.fileio import sha256_file

MANIFEST = "manifest.json"
CHECK_SAMPLE = "check_sample.png"  # an image the export was validated on: the self-check runs it
EXPORT_FORMAT = "lga-export-onnx/2"
ENGINE_FORMAT = "lga-export-engine/2"
TOKENIZER_DIR = "tokenizer"
REEXPORT = "re-export with lga-export onnx --force"
REBUILD = "rebuild with lga-export trt --force"


# The manifest's `validation` record (written by export/validate.py, read by reports and runtimes).
class _PrecisionRequired(TypedDict):
    providers: Any  # runner.providers_in_use(): graph -> what executes it
    reference: str
    candidate: str
    passed: bool
    problems: list[str]
    atol: float
    min_dice: float


class PrecisionValidation(_PrecisionRequired, total=False):
    """One precision's figures: `PairParity.to_dict()` (with one Parity per part, keyed by the graph
    names and end_to_end), what ran it, and whether every reference mask was empty."""

    reference_masks_empty: bool


class _ReportRequired(TypedDict):
    batch: int
    samples: list[str]
    source: str
    results: dict[str, PrecisionValidation]  # precision -> figures
    passed: bool


class ValidationReport(_ReportRequired, total=False):
    """The manifest's `validation`: every precision against PyTorch; `dropped` (precision -> its
    failure lines) when the export left failing reduced-precision graphs out."""

    dropped: dict[str, list[str]]


class GraphEntry(TypedDict):
    """One graph at one precision in a manifest: its file, its external-data files, their size."""

    file: str
    external_data: list[str]
    bytes: int


class ExportManifest(TypedDict, total=False):
    """manifest.json of an export folder (EXPORT_FORMAT), as `export_onnx` writes it. Not total: a
    folder read from disk is checked key by key where it is opened (`open_export`), and older
    folders may lack what a newer export writes."""

    format: str
    config: dict[str, Any]  # LGAConfig as JSON
    model_digest: str
    opset: int
    precisions: list[str]
    io: dict[str, dict[str, list[dict[str, Any]]]]  # graph -> inputs/outputs -> tensor specs
    graphs: dict[str, dict[str, GraphEntry]]  # graph -> precision -> entry
    int8: dict[str, Any] | None  # what the quantizer recorded (method, calibration)
    tokenizer: dict[str, Any]  # folder, source, max_length
    traced_sizes: dict[str, int]
    libraries: dict[str, Any]
    validation: ValidationReport | None  # None: exported with validate=False
    check_sample: dict[str, str]  # file, name, text, source: the runtime self-check's sample (CHECK_SAMPLE)
    files: dict[str, str]  # relative path -> sha256
    deployment_paths: list[dict[str, Any]]  # the demo's summary only, never on disk


def is_openvino_ir(path: str | Path) -> bool:
    """An OpenVINO IR (`--int8 ov`: .xml beside its .bin), which only the ov backend runs."""
    return Path(path).suffix == ".xml"


def read_json(path: Path, what: str, fix: str) -> dict[str, Any]:
    """A manifest as a dict, or a one-line error naming the file and the fix."""
    if not path.is_file():
        raise LGAError(f"{path} not found; {what} without its manifest is not trusted - {fix}")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LGAError(f"{path} is not valid JSON ({type(exc).__name__}); {fix}") from None
    if not isinstance(data, dict):
        raise LGAError(f"{path} is not a manifest (a JSON object); {fix}")
    return data


def inside(folder: Path, relative: object, manifest: Path, fix: str) -> Path:
    """`folder/relative`, refused when it would leave the folder (absolute, `..`, a link out)."""
    if not isinstance(relative, str) or not relative or Path(relative).is_absolute() or ".." in Path(relative).parts:
        raise LGAError(f"{manifest}: file entry {relative!r} points outside {folder}; {fix}")
    path = folder / relative
    if not path.resolve().is_relative_to(folder.resolve()):
        raise LGAError(f"{path}: a link that points outside {folder}; replace it with the file itself or {fix}")
    return path


def verify_files(folder: Path, files: object, manifest: Path, fix: str) -> None:
    """Every listed file is inside the folder, present, and has the recorded sha256."""
    if not isinstance(files, dict) or not files:
        raise LGAError(f"{manifest} lists no file digests (written by an older lga-export?); {fix}")
    for relative, digest in files.items():
        path = inside(folder, relative, manifest, fix)
        if not path.is_file():
            raise LGAError(f"{path}: listed in {manifest.name} but missing; {fix}")
        if sha256_file(path) != digest:
            raise LGAError(f"{path}: sha256 differs from {manifest.name} (changed after it was written); {fix}")


def file_digests(folder: Path) -> dict[str, str]:
    """sha256 of every file below `folder` (relative POSIX paths), for a manifest."""
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MANIFEST}


def check_model(recorded: object, expected: str | None, where: Path, fix: str) -> None:
    """Refuse an artefact of another model than the one the caller holds."""
    if expected is not None and recorded != expected:
        raise LGAError(f"{where} belongs to another model (digest {str(recorded)[:12]}, this model is "
                       f"{expected[:12]}); {fix}")


def manifest_config(manifest: dict[str, Any], path: Path, fix: str) -> LGAConfig:
    """The model config a manifest records, or a one-line error naming the manifest and the fix."""
    raw = manifest.get("config")
    if not isinstance(raw, dict):
        raise LGAError(f"{path} has no model config; {fix}")
    try:
        return LGAConfig.from_json(json.dumps(raw))
    except TypeError as exc:
        raise LGAError(f"{path}: the model config is incomplete or mistyped ({exc}); {fix}") from None


@dataclass(frozen=True)
class ExportArtifact:
    """A verified export folder: its manifest, model config and graph files."""

    folder: Path
    manifest: ExportManifest
    config: LGAConfig

    @property
    def model_digest(self) -> str:
        return self.manifest["model_digest"]

    @property
    def precisions(self) -> list[str]:
        return list(self.manifest.get("precisions", []))

    @property
    def tokenizer_dir(self) -> Path:
        return self.folder / TOKENIZER_DIR

    def graph_entry(self, graph: str, precision: str) -> dict[str, Any]:
        entry = self.manifest.get("graphs", {}).get(graph, {}).get(precision)
        if not isinstance(entry, dict):
            hint = {"fp16": "re-export with --fp16", "int8": "re-export with --int8"}.get(precision, REEXPORT)
            raise LGAError(f"{self.folder}: no {precision} {graph} graph (has {self.precisions}); {hint}")
        return entry

    def graph_digest(self, graph: str, precision: str) -> str:
        """One sha256 over a graph's file and its external-data files, from the verified manifest:
        the key of caches derived from the graph (a re-export with other weights changes it)."""
        entry = self.graph_entry(graph, precision)
        names = [entry["file"], *entry.get("external_data", [])]
        return hashlib.sha256("|".join(f"{n}:{self.manifest['files'][n]}" for n in names).encode()).hexdigest()

    def graph_format(self, graph: str, precision: str) -> str:
        """'openvino-ir' for an OpenVINO IR (`--int8 ov`; only the ov backend runs it), else 'onnx'."""
        return "openvino-ir" if is_openvino_ir(str(self.graph_entry(graph, precision).get("file", ""))) else "onnx"

    @property
    def int8_format(self) -> str | None:
        """The format of this export's INT8 graphs: 'openvino-ir' when one is an OpenVINO IR,
        'onnx' otherwise, None without them (`registry.int8_backend` names the backend that runs it)."""
        if "int8" not in self.precisions:
            return None
        formats = {self.graph_format(name, "int8") for name in self.manifest.get("graphs", {})}
        return "openvino-ir" if "openvino-ir" in formats else "onnx"

    def graph(self, graph: str, precision: str) -> Path:
        """The verified ONNX file of `graph` at `precision`."""
        return inside(self.folder, self.graph_entry(graph, precision).get("file"), self.folder / MANIFEST, REEXPORT)


def open_export(folder: str | Path, model_digest: str | None = None) -> ExportArtifact:
    """Verify an export folder and return what it holds (see the module docstring)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LGAError(f"{folder}: not an export folder; export one with lga-export onnx --out {folder}")
    path = folder / MANIFEST
    manifest = read_json(path, "an export folder", REEXPORT)
    if manifest.get("format") != EXPORT_FORMAT:
        raise LGAError(f"{path}: format {manifest.get('format')!r}, this lga-export reads {EXPORT_FORMAT}; {REEXPORT}")
    config = manifest_config(manifest, path, REEXPORT)
    verify_files(folder, manifest.get("files"), path, REEXPORT)
    graphs = manifest.get("graphs")
    if not isinstance(graphs, dict) or not graphs:
        raise LGAError(f"{path} lists no graphs; {REEXPORT}")
    for graph, by_precision in graphs.items():  # every graph file is one of the verified files
        for precision, entry in (by_precision.items() if isinstance(by_precision, dict) else []):
            names = [entry.get("file"), *entry.get("external_data", [])] if isinstance(entry, dict) else [None]
            for name in names:
                inside(folder, name, path, REEXPORT)
                if name not in manifest["files"]:
                    raise LGAError(f"{path}: the {precision} {graph} graph file {name!r} has no sha256; {REEXPORT}")
    check_model(manifest.get("model_digest"), model_digest, folder, "export this model with lga-export onnx, "
                "or pass the checkpoint it was exported from")
    return ExportArtifact(folder, cast(ExportManifest, manifest), config)


def export_of(source: Any, model_digest: str | None = None, runtime: str = "this backend") -> ExportArtifact:
    """The verified export a runner was given: an ExportArtifact (re-checked against `model_digest`)
    or an export folder path."""
    if isinstance(source, ExportArtifact):
        return open_export(source.folder, model_digest) if model_digest is not None else source
    if isinstance(source, (str, Path)) and Path(source).is_dir():
        return open_export(source, model_digest)
    raise LGAError(f"{runtime} runs an export folder; export the model first with lga-export onnx and pass the folder")


def engine_manifest_path(folder: Path, graph: str, precision: str) -> Path:
    return Path(folder) / f"{graph}.{precision}.manifest.json"


@dataclass(frozen=True)
class EngineArtifact:
    """A verified TensorRT engine: its manifest, engine file and engine folder."""

    manifest: dict[str, Any]
    engine: Path
    folder: Path


def open_engine(folder: str | Path, graph: str, precision: str, model_digest: str | None = None) -> EngineArtifact:
    """Verify one engine of an engine folder (files, digests, model) before TensorRT sees it."""
    folder = Path(folder)
    path = engine_manifest_path(folder, graph, precision)
    build = f"build it with lga-export trt{' --fp16' if precision == 'fp16' else ''} --out {folder}"
    if not path.is_file():
        raise LGAError(f"{path} not found; an engine without its manifest is not trusted - {build}")
    manifest = read_json(path, "an engine", REBUILD)
    if manifest.get("format") != ENGINE_FORMAT:
        raise LGAError(f"{path}: format {manifest.get('format')!r}, this lga-export reads {ENGINE_FORMAT}; {REBUILD}")
    verify_files(folder, manifest.get("files"), path, REBUILD)
    check_model(manifest.get("model_digest"), model_digest, path, "build engines from this model's export")
    return EngineArtifact(manifest, inside(folder, manifest.get("engine"), path, REBUILD), folder)
