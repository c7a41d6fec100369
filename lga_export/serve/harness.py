"""`lga-export serve` in a subprocess, for the tests and the benchmarks that drive a real server:
one way to start it on a free loopback port, wait for its ready line, stop it with SIGTERM (as a
user would) and keep its output, so a harness fix reaches every caller."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

CLI = [sys.executable, "-m", "lga_export.cli.main"]
READY = "ready at"  # the server's ready line (cli/serve.py prints it once the deployment answers)


class ServeDidNotStart(RuntimeError):
    """The server exited or missed its start-up deadline; the message ends with its last output."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the OS picks it; another process could still take it)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class ServeProcess:
    """`lga-export serve --host 127.0.0.1 --port PORT ARGS`: its merged stdout/stderr is read by a
    thread into `lines` (and `log`, when given) so the pipe never fills and blocks the server.
    `env` adds variables to this process's environment; a None value removes one."""

    def __init__(self, args: Sequence[str], *, port: int | None = None, key: str | None = None,
                 log: Path | None = None, env: Mapping[str, str | None] | None = None,
                 cwd: Path | None = None) -> None:
        self.port = port if port is not None else free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.key = key
        self.command = [*CLI, "serve", "--host", "127.0.0.1", "--port", str(self.port), *args]
        self.lines: list[str] = []
        self.ready_line = ""
        self.ready = threading.Event()
        self._log: IO[str] | None = log.open("w") if log is not None else None
        self.started = time.perf_counter()
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env=_environment(env), cwd=cwd)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if self._log is not None:
                self._log.write(line)
                self._log.flush()
            self.lines.append(line.rstrip())
            if READY in line and not self.ready.is_set():
                self.ready_line = line.strip()
                self.ready.set()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def client(self, **options: Any) -> Any:
        """A `Client` of this server, with its API key."""
        from lga_export.serve.client import Client

        return Client(self.url, api_key=self.key, **options)

    def wait_ready(self, timeout: float, tail: int = 30) -> float:
        """Seconds from launch to the ready line; a server that exits or misses `timeout` is
        stopped and raises ServeDidNotStart with its last `tail` lines of output."""
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise ServeDidNotStart(f"lga-export serve did not come up (exit {self.process.returncode}):\n"
                                       + "\n".join(self.lines[-tail:]))
        return time.perf_counter() - self.started

    def stop(self, timeout: float = 90) -> int | None:
        """SIGTERM, then a kill after `timeout` s; the exit code (negative: the signal that ended it)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.reader.join(10)
        if self._log is not None and not self.reader.is_alive():
            self._log.close()
        return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)


def _environment(changes: Mapping[str, str | None] | None) -> dict[str, str]:
    """This process's environment, unbuffered output (the ready line arrives when printed), no Ray
    usage reporting, and `changes`."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    for name, value in (changes or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env
