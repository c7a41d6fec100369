"""Installed versions of the libraries that shape an export or a measurement (for manifests and reports)."""

from __future__ import annotations

import platform
from importlib import metadata

LIBRARIES = ("lga-export", "torch", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxscript", "onnxconverter-common",
             "transformers", "tokenizers", "segment-anything", "numpy", "tensorrt", "matplotlib")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions
