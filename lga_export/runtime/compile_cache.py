"""Cache entries that are verified like the export they came from (issue #21).

What runs from a cache (ONNX Runtime's optimised graph, OpenVINO's compiled blobs) bypasses the
export folder's manifest, so each entry - one folder - carries its own record, `lga-cache.json`,
written atomically and last: the sha256 of every file in the entry and the entry's key (the
source graph's sha256, the runtime's version, the options that change what is built, the CPU).
Before an entry is used it is checked against the key the runner computes now: a missing or
unreadable record, another key, a file that is missing, extra, changed or not a plain file, or an
entry that is a symbolic link means the entry is deleted and rebuilt from the verified graph,
with one line on stderr saying why; it is never used. The runners report such an entry as
'rebuilt' (with the reason), not as a cache hit. A cache folder others can write is refused
earlier (`host.ensure_cache_dir`).

Cost: the sha256 of the entry's files, paid once per predict or serve start when the runner opens
(per graph, before the session or compile), never per request. `verify_cost` on both graphs'
entries, median of 5, under nice on the 2-core Xeon while a training job ran (2026-12-01):
tiny (the default model; the text graph is most of it): ONNX Runtime 140 ms for 96.5 MB, OpenVINO
123 ms for 97.4 MB; vit_b (random weights): ONNX Runtime 631 ms for 491 MB, OpenVINO 602 ms for
479 MB, i.e. about 0.8 GB/s of sha256.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lga_export.fileio import atomic_file

RECORD = "lga-cache.json"
FORMAT = 1


def say(line: str) -> None:
    """The one stderr line a discarded entry gets (a plain print: warnings.warn adds a second line)."""
    print(line, file=sys.stderr, flush=True)


def _sha256(path: Path) -> str:
    """sha256 of a plain file, never through a symbolic link (O_NOFOLLOW)."""
    import hashlib

    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _plain(key: dict[str, Any]) -> dict[str, Any]:
    """The key as it reads back from JSON (tuples become lists), so the two compare equal."""
    return json.loads(json.dumps(key, sort_keys=True))


def _key_difference(recorded: Any, key: dict[str, Any]) -> str:
    if not isinstance(recorded, dict):
        return "its record holds no key"
    fields = sorted(k for k in set(recorded) | set(key) if recorded.get(k) != key.get(k))
    shown = ", ".join(f"{f} {str(recorded.get(f))[:16]!s} instead of {str(key.get(f))[:16]!s}" for f in fields[:3])
    return f"it was built for another key ({shown})"


def _file_problem(entry: Path, files: dict[str, str]) -> str | None:
    """Why the files of `entry` are not exactly those its record lists, with their sha256."""
    names = set(os.listdir(entry)) - {RECORD}
    if names - set(files):
        return f"it holds a file its record does not list ({sorted(names - set(files))[0]})"
    if set(files) - names:
        return f"its file {sorted(set(files) - names)[0]} is missing"
    for name, digest in sorted(files.items()):
        if not stat.S_ISREG(os.lstat(entry / name).st_mode):
            return f"its file {name} is not a plain file (a symbolic link or a folder)"
        if _sha256(entry / name) != digest:
            return f"its file {name} does not match the sha256 its record holds"
    return None


def problem(entry: Path, key: dict[str, Any]) -> str | None:
    """Why `entry` must not be used for `key` (None: it may). The entry must exist and not be empty."""
    info = os.lstat(entry)
    if stat.S_ISLNK(info.st_mode):
        return "it is a symbolic link"
    if not stat.S_ISDIR(info.st_mode):
        return "it is not a folder"
    try:
        if not stat.S_ISREG(os.lstat(entry / RECORD).st_mode):
            return "its record is not a plain file"
        fd = os.open(entry / RECORD, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd) as handle:
            record = json.load(handle)
    except FileNotFoundError:
        return "it has no record (an unfinished or foreign entry)"
    except (OSError, ValueError):
        return "its record cannot be read"
    if not isinstance(record, dict) or record.get("format") != FORMAT or not isinstance(record.get("files"), dict):
        return "its record is not an lga-export cache record"
    if record.get("key") != _plain(key):
        return _key_difference(record.get("key"), _plain(key))
    try:
        return _file_problem(entry, record["files"])
    except OSError as exc:
        return f"its files cannot be read ({exc.strerror or type(exc).__name__})"


def discard(entry: Path, reason: str, report: Callable[[str], None] = say) -> None:
    """Delete `entry` (a link itself, never what it points to) and say why, in one line."""
    report(f"warning: cache entry {entry} was not used and is rebuilt: {reason}")
    try:
        if entry.is_symlink() or not entry.is_dir():
            entry.unlink()
        else:
            shutil.rmtree(entry)
    except FileNotFoundError:
        pass


def admit(entry: Path, key: dict[str, Any], report: Callable[[str], None] = say) -> tuple[str, str | None]:
    """Check `entry` before use: ('hit', None) when it is verified, ('absent', None) when there is
    nothing (or an empty folder) there, ('rebuilt', reason) after discarding a bad entry."""
    try:
        empty = entry.is_dir() and not entry.is_symlink() and not any(entry.iterdir())
    except OSError:
        empty = False
    if empty or not os.path.lexists(entry):
        return "absent", None
    reason = problem(entry, key)
    if reason is None:
        return "hit", None
    discard(entry, reason, report)
    return "rebuilt", reason


def seal(entry: Path, key: dict[str, Any]) -> dict[str, str]:
    """Record the sha256 of every file now in `entry` and its key; the record is written last and
    atomically, so an entry interrupted before this has no record and is never used."""
    files = {name: _sha256(entry / name) for name in sorted(os.listdir(entry)) if name != RECORD}
    with atomic_file(entry / RECORD, force=True) as tmp:
        tmp.write_text(json.dumps({"format": FORMAT, "key": _plain(key), "files": files}, indent=1, sort_keys=True))
    return files


def publish(staging: Path, entry: Path) -> bool:
    """Move a sealed staging folder onto `entry` (absent or empty); False when a concurrent writer
    published first (its entry is kept, ours deleted)."""
    try:
        os.rename(staging, entry)
        return True
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        return False


def verify_cost(entries: list[Path]) -> float:
    """Seconds to check `entries` against their own records (what a session start pays)."""
    import time

    start = time.perf_counter()
    for entry in entries:
        record = json.loads((entry / RECORD).read_text())
        assert problem(entry, record["key"]) is None, entry
    return time.perf_counter() - start
