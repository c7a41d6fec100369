"""The local Ray instance that `serve` and `predict --ray` start (#21 item 5) listens on 127.0.0.1
only: GCS, raylet, object manager, workers, the agents and metrics. It listened on every interface
(GCS, raylet and workers on `::`, the agents' and metrics ports on 0.0.0.0), reachable from the network
while the server itself was told to stay on loopback."""

from __future__ import annotations

import ipaddress
import os

import pytest

pytest.importorskip("ray", reason="ray is not installed (pip install \"lga-export[serve]\")")
psutil = pytest.importorskip("psutil")


def _listening(root: psutil.Process) -> list[tuple[str, str, int]]:
    """(process name, address, port) of every listening TCP socket and bound unconnected UDP socket
    of `root` and its descendants (Ray's GCS, raylet, agents and workers are among them)."""
    found = []
    for process in [root, *root.children(recursive=True)]:
        try:
            name = process.name()
            for conn in process.net_connections(kind="inet"):
                tcp_listen = conn.status == psutil.CONN_LISTEN
                udp_bound = conn.type.name == "SOCK_DGRAM" and conn.laddr and not conn.raddr
                if tcp_listen or udp_bound:
                    found.append((name, conn.laddr.ip, conn.laddr.port))
        except psutil.Error:
            continue
    return found


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_local_ray_listens_on_loopback_only() -> None:
    """With a Serve application deployed as `serve` does (proxy, controller, a replica): every
    listening socket of every Ray process is on loopback (a replica's inter-deployment gRPC server,
    an ASGI entry past the proxy, was on `::` even then)."""
    pytest.importorskip("ray.serve", reason="ray[serve] is not installed")
    from ray import serve

    from lga_export.serve.ray_cluster import ray_session

    with ray_session(None, num_cpus=2) as ray:
        @ray.remote
        def worker_pid() -> int:
            return os.getpid()

        @serve.deployment
        class Probe:
            def __call__(self, request) -> str:
                return str(os.getpid())

        try:
            worker = ray.get(worker_pid.remote())  # a task worker is up, with its own gRPC server
            serve.start(http_options={"host": "127.0.0.1", "port": _free_port()})
            serve.run(Probe.bind(), name="probe", route_prefix="/probe")
            gcs = ray.get_runtime_context().gcs_address
            sockets = _listening(psutil.Process())
            ours = {p.pid for p in psutil.Process().children(recursive=True)}
        finally:
            serve.shutdown()
    names = {name for name, _, _ in sockets}
    assert {"gcs_server", "raylet"} <= names, sockets  # the instance is this process's own, not one joined
    assert any(name.startswith("ray::ServeReplica") for name in names), names
    assert worker in ours, "the worker's sockets were not among those checked"
    assert gcs.startswith("127.0.0.1:"), gcs
    exposed = [s for s in sockets if not _loopback(s[1])]
    assert not exposed, f"listening beyond loopback: {exposed}"
