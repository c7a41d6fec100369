"""Joining or starting Ray for `serve` and `predict --ray`, and turning Ray's errors into one line."""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

from lga_export.errors import LGAError, ValidationFailed, one_line
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
    to `address` ("auto", "HOST:PORT", "ray://HOST:PORT"), else a new local instance (never one
    found running on the machine) whose every port listens on 127.0.0.1 only; what this function
    started or joined it shuts down (a cluster it joined keeps running). The caller's SIGTERM
    handler stays in place: ray.init would replace it with an exit(15)."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    try:
        with _sigterm_after_start(ray):
            if address:
                ray.init(address=address, logging_level=logging.WARNING)
            else:
                _init_loopback(ray, num_cpus)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise LGAError(f"cannot start or join {where} ({one_line(exc)}); check --address "
                       f"(ray status on the head node prints it)") from None
    try:
        yield ray
    finally:
        ray.shutdown()


@contextlib.contextmanager
def _sigterm_after_start(ray: Any) -> Iterator[None]:
    """Hold a SIGTERM that arrives while Ray starts until it has started, then shut Ray down and
    raise KeyboardInterrupt (exit 130). Ray's own handler, an exit(15) raised anywhere inside
    ray.init, was seen to leave a half-started Ray and a driver that never returned; and the
    driver's core worker is started without Ray's native failure-signal handler, which printed a
    stack dump for every SIGTERM (the driver is a Python program: faults show as Python's)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    from ray._private import ray_constants

    received: list[int] = []
    utils = ray._private.utils
    install = getattr(utils, "set_sigterm_handler", None)
    dump = getattr(ray_constants, "RAY_DISABLE_FAILURE_SIGNAL_HANDLER", None)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    if install is not None:
        utils.set_sigterm_handler = lambda handler: None
    if dump is not None:  # the core worker's native handler would print a stack dump for a SIGTERM
        ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True
    try:
        yield
    except SystemExit as exc:  # a Ray without that hook installed its handler, and it fired
        if exc.code != signal.SIGTERM:
            raise
        received.append(signal.SIGTERM)
    finally:
        if install is not None:
            utils.set_sigterm_handler = install
        if dump is not None:
            ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = dump
        signal.signal(signal.SIGTERM, previous)
    if received:
        ray.shutdown()
        raise KeyboardInterrupt


def _init_loopback(ray: Any, num_cpus: int | None) -> None:
    """A new local Ray instance on 127.0.0.1 only: GCS, raylet, object manager, workers, agents and
    metrics. ray.init turns a loopback `_node_ip_address` into the machine's address unless Ray is
    in its single-machine mode (ENABLE_RAY_CLUSTER off, as on macOS and Windows), so that mode is
    on while it starts; tests/test_ray_loopback.py checks the sockets of every Ray process."""
    from ray._private import ray_constants

    single = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    ray_constants.ENABLE_RAY_CLUSTER = False
    notice = logging.getLogger("ray._private.authentication.authentication_token_setup")
    notice.addFilter(_token_notice)
    try:
        ray.init(address="local", _node_ip_address="127.0.0.1", num_cpus=num_cpus, include_dashboard=False,
                 logging_level=logging.WARNING,
                 runtime_env={"worker_process_setup_hook": f"{__name__}.loopback_worker_setup"})
    finally:
        notice.removeFilter(_token_notice)
        if single is not None:
            ray_constants.ENABLE_RAY_CLUSTER = single


_REPLICA = "ray.serve._private.replica"


def loopback_worker_setup() -> None:
    """Setup hook of every worker of a loopback instance: a Serve replica binds its inter-deployment
    gRPC server (an ASGI entry to the deployment, past the proxy and its authentication) to "[::]:0",
    every interface, whatever the node's address; it is bound to 127.0.0.1 instead. The replica
    module is patched when first imported, so workers that never serve do not pay for importing it."""
    if _REPLICA in sys.modules:
        _bind_replica_grpc_to_loopback(sys.modules[_REPLICA])
    elif not any(isinstance(finder, _ReplicaPatcher) for finder in sys.meta_path):
        sys.meta_path.insert(0, _ReplicaPatcher())


class _ReplicaPatcher(importlib.abc.MetaPathFinder):
    """Finds Serve's replica module with the other finders and patches it once it has run."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != _REPLICA:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            run = spec.loader.exec_module

            def exec_module(module: Any) -> None:
                run(module)
                _bind_replica_grpc_to_loopback(module)

            spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def _bind_replica_grpc_to_loopback(module: Any) -> None:
    bind = getattr(module, "add_port_to_grpc_server", None)
    if bind is None or getattr(bind, "lga_loopback", False):
        return

    def loopback(server: Any, address: str) -> int:
        host, _, port = address.rpartition(":")
        return bind(server, f"127.0.0.1:{port}" if host in ("[::]", "0.0.0.0", "") else address)

    loopback.lga_loopback = True  # type: ignore[attr-defined]
    module.add_port_to_grpc_server = loopback


def _token_notice(record: logging.LogRecord) -> bool:
    """Drop Ray's start-up notice that token authentication is on (it is, and nothing is wrong);
    its warning that authentication is off still shows."""
    return not record.getMessage().startswith("Token authentication is enabled")


def check_source(backend: str | None, source: str | None, precision: str,
                 device: str | None, self_check: str | None = None) -> tuple[str, str]:
    """(backend, device) for `source`, picked by the registry's one rule (`resolve`, as
    `open_runner` picks them: aliases, the INT8 graph's backend, the backend's device), with the
    source verified here by the backend's own check, before any Ray worker opens it, so a wrong
    --model fails in one line instead of in every replica or actor.

    `self_check` (a mode of `open_runner`; None: not here): a reduced precision that checks itself
    is checked once here, on the driver, before the workers start, so a refusal is one line and
    the workers of this machine read the cached verdict instead of all computing it at once."""
    from lga_export.runtime.registry import open_runner, resolve, runner_class

    chosen = resolve(backend, source, precision, device)
    cls = runner_class(chosen.backend)
    cls.verify_source(chosen.source, precision, chosen.device)
    if self_check not in (None, "off") and precision in cls.self_checked:
        open_runner(chosen.backend, chosen.source, precision, chosen.device, self_check=self_check).deactivate()
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
