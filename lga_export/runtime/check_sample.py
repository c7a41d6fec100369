"""What a runtime self-check runs: the built-in synthetic sample, or an artefact's own check
sample (an image its export was validated on), verified against the artefact's manifest.

Apart from runtime/self_check.py so that a runner (runtime/base.py) and the TensorRT build can
take an artefact's sample without importing the check itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from lga_export.errors import LGAError

CHECK = {"version": 1, "sample": "built-in synthetic", "count": 1, "size": 224, "seed": 0, "batch": 1}


@dataclass(frozen=True)
class CheckSample:
    """What a self-check runs: `key` goes into every verdict's key (another sample, another
    verdict), `label` into its lines and records. The pixels are read or built on first use, so
    an open whose verdict is cached (the key alone) never touches them."""

    key: dict[str, Any]
    label: str
    load: Callable[[], list] = field(repr=False, compare=False)

    @cached_property
    def samples(self) -> list:
        return self.load()


def builtin_check() -> CheckSample:
    """The built-in synthetic sample, for artefacts that carry none of their own."""
    from lga_export.samples import synthetic_samples

    return CheckSample(CHECK, "the built-in check sample",
                       lambda: synthetic_samples(CHECK["count"], size=CHECK["size"], seed=CHECK["seed"]))


def export_check(artifact, manifest_name: str | None = None, fix: str | None = None) -> CheckSample | None:
    """The export's own check sample (an image it was validated on, its file verified against the
    manifest's sha256 when the export was opened), or None for an export that carries none.
    `artifact` may be an engine (artifact.EngineArtifact) that carries its export's sample: then
    `manifest_name` names its manifest file and `fix` says how to rebuild it."""
    from lga_export.artifact import MANIFEST, REEXPORT, inside
    from lga_export.imageio import read_image
    from lga_export.samples import Sample

    entry = artifact.manifest.get("check_sample")
    if entry is None:
        return None
    where, fix = artifact.folder / (manifest_name or MANIFEST), fix or REEXPORT
    fields = ("file", "name", "text", "source")
    if not isinstance(entry, dict) or not all(isinstance(entry.get(f), str) and entry.get(f) for f in fields):
        raise LGAError(f"{where}: check_sample needs {', '.join(fields)} as strings; {fix}")
    path = inside(artifact.folder, entry["file"], where, fix)
    digest = artifact.manifest.get("files", {}).get(entry["file"])
    if digest is None:
        raise LGAError(f"{where}: the check sample {entry['file']!r} has no sha256; {fix}")
    key = {"version": CHECK["version"], "sample": "the export's own", "source": entry["source"],
           "name": entry["name"], "text": entry["text"], "sha256": digest, "count": 1, "batch": CHECK["batch"]}
    return CheckSample(key, f"the export's check sample ({entry['source']} {entry['name']})",
                       lambda: [Sample(entry["name"], read_image(path), entry["text"], None)])
