"""Joining or starting Ray for `serve` and `predict --ray`, and turning Ray's errors into one line."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from lga_export.errors import LGAError, ValidationFailed
from lga_export.serve import RAY_MISSING, ray_available


def import_ray() -> Any:
    if not ray_available():
        raise LGAError(RAY_MISSING)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report, no prompt
    import ray

    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[Any]:
    """Ray for the block: the caller's if already initialised (left running), else a connection
    to `address` ("auto", "HOST:PORT", "ray://HOST:PORT"), else a new local instance; what this
    function started or joined it shuts down (a cluster it joined keeps running)."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    try:
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            # address="local": a new instance even when another one on this machine registered itself
            # in /tmp/ray (ray.init() alone would join that one, and its CPUs and Serve apps)
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise LGAError(f"cannot start or join {where} ({one_line(exc)}); check --address "
                       f"(ray status on the head node prints it)") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def one_line(exc: BaseException, limit: int = 300) -> str:
    return " ".join(str(exc).split())[:limit] or type(exc).__name__


def check_source(backend: str | None, source: str | None, precision: str,
                 device: str | None) -> tuple[str, str]:
    """(backend, device) for `source`, picked by the registry's one rule (`resolve`, as
    `open_runner` picks them: aliases, the INT8 graph's backend, the backend's device), with the
    source verified here by the backend's own check, before any Ray worker opens it, so a wrong
    --model fails in one line instead of in every replica or actor."""
    from lga_export.runtime.registry import resolve, runner_class

    chosen = resolve(backend, source, precision, device)
    runner_class(chosen.backend).verify_source(chosen.source, precision, chosen.device)
    return chosen.backend, chosen.device


def user_error_in(exc: BaseException) -> LGAError | None:
    """The LGAError a Ray task, actor, replica or Data job raised remotely, if that is what failed:
    found in the exception chain, or else in the remote traceback Ray puts in the message."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, LGAError):
            return current
        stack.extend([getattr(current, "cause", None), current.__cause__, current.__context__])
    for line in reversed(str(exc).splitlines()):
        for kind in (ValidationFailed, LGAError):
            marker = f"{kind.__name__}: "
            if marker in line and "lga_export.errors." in line:
                return kind(line.split(marker, 1)[1].strip())
    return None
