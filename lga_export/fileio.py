"""Atomic output files: write to a temporary name beside the target, then rename.

An interrupted write never leaves a file that looks like a finished ONNX graph, engine or
checkpoint, and an existing file is never replaced without `force`. Temporary names carry the
writer's host and pid (`.<name>.<host>-<pid>.<random>.partial`), so what a killed run (SIGKILL)
left is recognised and removed by the next write of the same target, never taken for an output.
Folder writers (`atomic_dir`, `atomic_files`) hold a lock on their target for the whole write:
a second run writing the same output at the same time is refused in one line, so a published
folder is always one run's complete output.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from lga_export.errors import LGAError

try:
    import fcntl
except ImportError:  # not on POSIX: writers are not locked
    fcntl = None  # type: ignore[assignment]

_PARTIAL = ".partial"
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]  # stale only on this host can be judged


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


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _owner_prefix(name: str) -> str:
    return f".{name}.{_HOST}-{os.getpid()}."


def sweep_stale(folder: Path, name: str) -> list[Path]:
    """Remove the temporary files and staging folders of target `name` in `folder` whose writer
    (a process of this host) is gone: what a killed run left. Returns what was removed."""
    pattern = re.compile(re.escape(f".{name}.") + r"([0-9a-f]{8})-(\d+)\.[A-Za-z0-9_]+" + re.escape(_PARTIAL))
    removed: list[Path] = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None or match.group(1) != _HOST or _alive(int(match.group(2))):
            continue
        try:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        except OSError:
            continue
        removed.append(entry)
    return removed


def staging_dir(folder: Path, name: str) -> Path:
    """A new private staging folder for target `name` in `folder`, after removing stale ones."""
    sweep_stale(folder, name)
    return Path(tempfile.mkdtemp(prefix=_owner_prefix(name), suffix=_PARTIAL, dir=folder))


def _lock_holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


def _acquire(lock: Path, target: Path) -> int | None:
    """An fd holding the flock of `lock`, or None where the file system has no flock."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            os.close(fd)
            raise LGAError(f"another lga-export run{holder} is writing {target} now; wait for it to finish or "
                           f"give another output path") from None
        except OSError:  # e.g. a network file system without flock: write unlocked
            os.close(fd)
            return None
        try:  # a finishing holder unlinks the file: the lock must be on the file that is still there
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextlib.contextmanager
def writer_lock(target: str | Path, lock: Path | None = None) -> Iterator[None]:
    """Hold the lock file of `target` (default `.<name>.lock` beside it) for the block. It is an
    flock, which the kernel releases when the process dies, even by SIGKILL, so a killed run
    never blocks the next one; LGAError naming the holder while another process holds it."""
    target = Path(target)
    if fcntl is None:
        yield
        return
    lock = lock or target.with_name(f".{target.name}.lock")
    fd = _acquire(lock, target)
    if fd is None:
        yield
        return
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()
        os.close(fd)


def _recover_backup(path: Path) -> None:
    """A run killed between moving the old folder aside and renaming the new one in left the old
    one as `.<name>.old`: put it back when nothing replaced it, else drop it (called under the lock)."""
    backup = path.with_name(f".{path.name}.old")
    if not backup.is_dir() or backup.is_symlink():
        return
    if path.exists():
        shutil.rmtree(backup, ignore_errors=True)
    else:
        os.replace(backup, path)


@contextlib.contextmanager
def atomic_file(path: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto `path` only on success."""
    path = Path(path)
    refuse_overwrite(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path.parent, path.name)
    fd, tmp_name = tempfile.mkstemp(prefix=_owner_prefix(path.name), suffix=_PARTIAL, dir=path.parent)
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
    """Yield a temporary folder beside `path`; it replaces `path` only when the block succeeds.
    The target is locked for the whole write (a concurrent writer of `path` gets one line)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise LGAError(f"{path} is a file, not a folder; give another output folder")
    refuse_overwrite(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    with writer_lock(path):
        _recover_backup(path)
        refuse_overwrite(path, force)  # again under the lock: another run may have published meanwhile
        with _staged_dir(path) as tmp:
            yield tmp


@contextlib.contextmanager
def _staged_dir(path: Path) -> Iterator[Path]:
    tmp = staging_dir(path.parent, path.name)
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
    try:
        with writer_lock(folder, folder / ".lga-export.lock"):
            for name in names:  # again under the lock: another run may have published meanwhile
                refuse_overwrite(folder / name, force)
            staging = staging_dir(folder, "staged")
            try:
                yield {name: staging / name for name in names}
                for name in names:
                    _publishable(staging / name, 0o666)
                    os.replace(staging / name, folder / name)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    finally:
        if created and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()  # a failure leaves no empty folder behind either


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
