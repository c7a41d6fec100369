"""Atomic output files: write to a temporary name beside the target, then rename.

An interrupted write never leaves a file that looks like a finished ONNX graph, engine or
checkpoint, and an existing file is never replaced without `force`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from lga_export.errors import LGAError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publishable(path: Path, mode: int) -> None:
    """mkstemp/mkdtemp create owner-only entries; give the result the usual umask-based mode."""
    os.chmod(path, mode & ~_umask())


def refuse_overwrite(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise LGAError(f"{path} already exists; pass --force to overwrite it")


@contextlib.contextmanager
def atomic_file(path: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto `path` only on success."""
    path = Path(path)
    refuse_overwrite(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _publishable(tmp, 0o666)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; it replaces `path` only when the block succeeds."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise LGAError(f"{path} is a file, not a folder; give another output folder")
    refuse_overwrite(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        yield tmp
        _publishable(tmp, 0o777)
        if path.exists():
            backup = path.with_name(f".{path.name}.old")
            shutil.rmtree(backup, ignore_errors=True)
            os.replace(path, backup)
            os.replace(tmp, path)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_files(folder: str | Path, names: list[str], force: bool = False) -> Iterator[dict[str, Path]]:
    """Stage several files of one folder and publish them together, only when the block succeeds
    (all or nothing: a failure or an interrupt leaves none of them)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise LGAError(f"{folder} is a file, not a folder; give another --out")
    if len(set(names)) != len(names):
        raise LGAError(f"two outputs would be called {sorted({n for n in names if names.count(n) > 1})[:3]}; "
                       f"rename the inputs so their names differ")
    for name in names:
        refuse_overwrite(folder / name, force)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staged.", suffix=".partial", dir=folder))
    try:
        yield {name: staging / name for name in names}
        for name in names:
            _publishable(staging / name, 0o666)
            os.replace(staging / name, folder / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not any(folder.iterdir()):
            folder.rmdir()  # a failure leaves no empty folder behind either


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
