"""What a runner needs to know about the host it runs on: the CPU model and SIMD flags (which
decide BF16/INT8 paths and are recorded beside every figure) and the per-user cache folder for
compiled or optimised models (never inside an export folder), kept under a size cap by removing
the least recently used entries."""

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


DEFAULT_CACHE_LIMIT_GB = 8.0


def cache_limit_bytes() -> int:
    """The cap on each cache kind's size: $LGA_EXPORT_CACHE_MAX_GB (default 8 GB)."""
    raw = os.environ.get("LGA_EXPORT_CACHE_MAX_GB", "")
    try:
        gigabytes = float(raw) if raw.strip() else DEFAULT_CACHE_LIMIT_GB
    except ValueError:
        gigabytes = DEFAULT_CACHE_LIMIT_GB
    return int(max(gigabytes, 0.0) * 2**30)


def _size(entry: Path) -> int:
    if entry.is_file():
        return entry.stat().st_size
    return sum(p.stat().st_size for p in entry.rglob("*") if p.is_file())


def touch_cache_entry(entry: Path) -> None:
    """Mark a cache entry (file or folder) as just used: pruning removes the least recently used."""
    try:
        os.utime(entry)
    except OSError:
        pass


def prune_cache(root: Path, keep: Path | None = None, limit: int | None = None) -> list[Path]:
    """Delete the least recently used entries directly under `root` until the rest fit in `limit`
    bytes (default `cache_limit_bytes()`); never `keep`. Returns what was deleted. Caches are
    rebuilt on demand, so a failure to delete is ignored."""
    import shutil

    limit = cache_limit_bytes() if limit is None else limit
    try:
        entries = [(p.stat().st_mtime, p, _size(p)) for p in root.iterdir()]
    except OSError:
        return []
    total = sum(size for _, _, size in entries)
    removed = []
    for _, entry, size in sorted(entries, key=lambda e: e[0]):
        if total <= limit:
            break
        if keep is not None and entry == keep:
            continue
        try:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        except OSError:
            continue
        total -= size
        removed.append(entry)
    return removed


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
