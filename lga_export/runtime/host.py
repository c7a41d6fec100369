"""What a runner needs to know about the host it runs on: the CPU model and SIMD flags (which
decide BF16/INT8 paths and are recorded beside every figure) and the per-user cache folder for
compiled or optimised models (never inside an export folder)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root(kind: str) -> Path:
    """Per-user cache folder for compiled / optimised models, never inside an export folder:
    $LGA_EXPORT_CACHE/<kind>, else $XDG_CACHE_HOME/lga-export/<kind>, else ~/.cache/lga-export/<kind>."""
    base = os.environ.get("LGA_EXPORT_CACHE")
    if base:
        return Path(base).expanduser() / kind
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "lga-export" / kind


def ensure_cache_dir(folder: Path) -> Path | None:
    """`folder` created private to the user (0700), or None when it cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        return folder if os.access(folder, os.W_OK) else None
    except OSError:
        return None


def cpu_identity() -> tuple[str, list[str]]:
    """(CPU model name, its x86 SIMD flags: avx*, amx*, fma, f16c) from /proc/cpuinfo, or the
    platform's name and no flags where that file does not exist."""
    import platform

    found: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "flags"):
                    found.setdefault(key.strip(), value.strip())
                if len(found) == 2:
                    break
    except OSError:
        pass
    flags = sorted(f for f in found.get("flags", "").split() if f.startswith(("avx", "amx", "fma", "f16c")))
    return found.get("model name") or platform.processor() or platform.machine(), flags
