"""What a runner needs to know about the host it runs on: the CPU model and SIMD flags (which
decide BF16/INT8 paths and are recorded beside every figure) and the per-user cache folder for
compiled or optimised models (never inside an export folder), kept under a size cap by removing
the least recently used entries."""

from __future__ import annotations

import math
import os
from pathlib import Path

from lga_export.errors import LGAError


def cache_base() -> Path:
    """$LGA_EXPORT_CACHE, else $XDG_CACHE_HOME/lga-export, else ~/.cache/lga-export."""
    base = os.environ.get("LGA_EXPORT_CACHE")
    if base:
        return Path(base).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "lga-export"


def cache_root(kind: str) -> Path:
    """Per-user cache folder for compiled / optimised models, never inside an export folder:
    `cache_base()`/<kind>."""
    return cache_base() / kind


def _refuse_shared(folder: Path) -> None:
    """A cache folder others can write (or that another user owns) could hand us their model:
    refused, naming the folder and the fix."""
    info = folder.stat()
    if info.st_uid != os.getuid():
        raise LGAError(f"cache folder {folder} belongs to another user (uid {info.st_uid}); set LGA_EXPORT_CACHE "
                       f"to a folder of your own")
    if info.st_mode & 0o022:
        raise LGAError(f"cache folder {folder} can be written by others (mode {oct(info.st_mode & 0o777)}); run "
                       f"chmod 700 {folder}, or set LGA_EXPORT_CACHE to a folder of your own")


def ensure_cache_dir(folder: Path, top: Path | None = None) -> Path | None:
    """`folder` created private to the user (0700, and so are the missing folders above it), or
    None when it cannot be written. `folder` and the folders above it up to `top` (default: the
    cache base when `folder` lies under it, else `folder` alone) must be the user's and writable
    by no one else: LGAError otherwise. An invalid LGA_EXPORT_CACHE_MAX_GB is refused here too,
    before any work, rather than after the first cache write."""
    cache_limit_bytes()
    base = cache_base()
    top = top if top is not None else (base if folder.is_relative_to(base) else folder)
    chain = [folder, *(p for p in folder.parents if p.is_relative_to(top))] if folder.is_relative_to(top) else [folder]
    for path in reversed([folder, *folder.parents]):  # checked before anything is created inside
        try:
            if not path.exists():
                path.mkdir(mode=0o700)  # parents=True would give the parents the umask's mode
                continue
        except OSError:
            return None
        if path in chain:
            _refuse_shared(path)
    return folder if os.access(folder, os.W_OK) else None


DEFAULT_CACHE_LIMIT_GB = 8.0


def cache_limit_bytes() -> int:
    """The cap on each cache kind's size: $LGA_EXPORT_CACHE_MAX_GB (default 8 GB); anything but a
    finite number >= 0 is one LGAError line (nan or inf used to fail every run after a cache write)."""
    raw = os.environ.get("LGA_EXPORT_CACHE_MAX_GB", "")
    if not raw.strip():
        return int(DEFAULT_CACHE_LIMIT_GB * 2**30)
    try:
        gigabytes = float(raw)
    except ValueError:
        gigabytes = math.nan
    if not math.isfinite(gigabytes) or gigabytes < 0:
        raise LGAError(f"LGA_EXPORT_CACHE_MAX_GB={raw.strip()[:40]!r} is not a cache size; give a number of "
                       f"gigabytes >= 0 (e.g. 8), or unset it for the default {DEFAULT_CACHE_LIMIT_GB:g}")
    return int(gigabytes * 2**30)


def disk_bytes(entry: Path) -> int:
    """Bytes of a file, or of the files under a folder; an entry that is itself a link counts 0
    (what it points to is not this entry's)."""
    if entry.is_symlink():
        return 0
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
        entries = [(p.stat().st_mtime, p, disk_bytes(p)) for p in root.iterdir()]
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
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
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


def gpu_identity(index: int = 0) -> dict[str, str | None]:
    """{'gpu': name, 'compute_capability': 'major.minor'} of CUDA device `index`, from torch when it
    is installed, else from nvidia-smi (the lean GPU install has no torch); 'unknown' when neither answers."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(index)
            return {"gpu": torch.cuda.get_device_name(index), "compute_capability": f"{major}.{minor}"}
    except Exception:  # noqa: BLE001 - no torch, or a broken CUDA: ask the driver
        pass
    import subprocess

    try:
        line = subprocess.run(["nvidia-smi", f"--id={index}", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20, check=True).stdout.strip().splitlines()[0]
        name, _, capability = line.rpartition(",")
        return {"gpu": name.strip(), "compute_capability": capability.strip()}
    except (OSError, subprocess.SubprocessError, IndexError):
        return {"gpu": f"unknown CUDA device {index}", "compute_capability": None}
