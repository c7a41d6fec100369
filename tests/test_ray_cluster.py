"""`lga-export serve` on a multi-node Ray cluster simulated on this machine (ray.cluster_utils):
a worker node lost under load drops no client connection, and the replica comes back elsewhere.

The cluster, the node kill (SIGKILL of the raylet and every process under it) and the one-shot
request come from benchmarks/ray_node_loss.py, which measures the same thing at length
(benchmarks/records/2026-12-01-ray-node-loss).
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="ray is not installed (pip install \"lga-export[serve]\")")
pytest.importorskip("ray.serve", reason="ray[serve] is not installed (pip install \"lga-export[serve]\")")
pytest.importorskip("multipart", reason="python-multipart is not installed (pip install \"lga-export[serve]\")")

REPO = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_S = 240
RECOVERY_TIMEOUT_S = 150


@pytest.fixture(scope="module")
def node_loss():
    spec = importlib.util.spec_from_file_location("ray_node_loss", REPO / "benchmarks" / "ray_node_loss.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["ray_node_loss"] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def cluster(node_loss):
    import ray

    if ray.is_initialized():
        ray.shutdown()
    started = node_loss.start_cluster(2)  # a head with 0 CPUs and two one-CPU worker nodes
    yield started
    started.shutdown()


def _sample() -> tuple[str, bytes, str]:
    from PIL import Image

    from lga_export.samples import validation_samples

    sample = validation_samples(1)[0][0]
    buffer = io.BytesIO()
    Image.fromarray(sample.rgb).save(buffer, format="PNG")
    return "xray.png", buffer.getvalue(), sample.text


def _send(node_loss, port: int, sample: tuple[str, bytes, str], key: str) -> dict:
    """One request on its own connection, no retry: {"status", "mask"} or {"outcome": ..., "error"}."""
    name, data, text = sample
    body, content_type = node_loss.multipart(name, data, text)
    answer = node_loss.attempt(port, "POST", "/v1/segment", body, {"Authorization": f"Bearer {key}",
                               "Content-Type": content_type}, 120.0)
    if "status" in answer and answer["status"] == 200:
        return {"status": 200, "mask": base64.b64decode(json.loads(answer["body"])["mask_png"])}
    return answer


@pytest.mark.slow
def test_lost_worker_node_drops_no_connection(tmp_path, node_loss, cluster) -> None:
    """Default --proxy-location (HeadOnly): the only Serve proxy runs on the head, and so does the
    /v1/health application, so when the replica's node dies every request still gets an HTTP
    answer (5xx while no replica runs, never a reset or refused connection), /v1/health answers,
    and the replica, re-placed on the other worker node, answers with the same mask."""
    key = "node-loss-test-key"
    key_file = tmp_path / "api-key"
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    port = node_loss.free_port()
    from lga_export.loading import embedded_checkpoint

    options = ["--model", str(embedded_checkpoint("tiny")), "--replicas", "1", "--cpus-per-replica", "1",
               "--max-batch", "1"]
    server = node_loss.Server(cluster.address, port, options, key_file, tmp_path / "server.log")
    try:
        server.wait_ready(STARTUP_TIMEOUT_S)
        proxies = cluster.actors("ProxyActor")
        replicas = cluster.actors(node_loss.REPLICA_CLASS)
        assert {p["node"] for p in proxies} == {"head"}, f"a Serve proxy off the head node: {proxies}"
        health = cluster.actors("LGAHealth")
        assert [h["node"] for h in health] == ["head"], f"/v1/health is not answered from the head: {health}"
        assert len(replicas) == 1 and replicas[0]["node"].startswith("worker-"), replicas
        sample = _sample()
        first = _send(node_loss, port, sample, key)
        assert first.get("status") == 200, first
        answers = _load_through_the_kill(node_loss, cluster, port, sample, key, replicas[0]["node"])
    finally:
        server.stop()
    broken = [a for a in answers if "status" not in a]
    assert not broken, f"requests without an HTTP answer: {broken[:3]}"
    assert all(a["status"] == 200 or a["status"] >= 500 for a in answers), {a["status"] for a in answers}
    served = [a["mask"] for a in answers if a["status"] == 200]
    assert served and all(mask == first["mask"] for mask in served), "a mask differs from the first answer's"


def _load_through_the_kill(node_loss, cluster, port: int, sample, key: str, victim: str) -> list[dict]:
    """Two clients send back to back; the replica's node is killed once both are busy; they stop
    at the first 200 from the replica re-placed elsewhere (or after RECOVERY_TIMEOUT_S)."""
    answers: list[dict] = []
    killed, recovered = threading.Event(), threading.Event()
    lock = threading.Lock()

    def client() -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S + RECOVERY_TIMEOUT_S
        while not recovered.is_set() and time.monotonic() < deadline:
            after_kill = killed.is_set()
            answer = _send(node_loss, port, sample, key)
            with lock:
                answers.append(answer)
                if after_kill and answer.get("status") == 200:
                    recovered.set()
            if answer.get("status") != 200:
                time.sleep(0.2)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    while len(answers) < 2:
        time.sleep(0.05)
    cluster.kill(victim)
    killed.set()
    health, deadline = [], time.monotonic() + RECOVERY_TIMEOUT_S
    while True:  # /v1/health asked every 2 s until the replica is back
        health.append(node_loss.attempt(port, "GET", "/v1/health", None, {}, 10.0))
        if recovered.wait(2.0) or time.monotonic() > deadline:
            break
    assert health and all("status" in h for h in health), f"/v1/health unanswered: {health[:3]}"
    for thread in threads:
        thread.join(130)
    placed = cluster.actors(node_loss.REPLICA_CLASS)
    assert recovered.is_set(), f"the replica did not come back in {RECOVERY_TIMEOUT_S} s (now: {placed})"
    assert placed and all(p["node"] not in ("head", victim) for p in placed), placed
    return answers


def test_an_unknown_proxy_location_is_refused_in_one_line() -> None:
    """Checked before Ray starts: exit 2, one line naming both choices."""
    import subprocess

    done = subprocess.run([sys.executable, "-m", "lga_export.cli.main", "serve", "--proxy-location", "Nowhere"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "HeadOnly" in lines[0] and "EveryNode" in lines[0], done.stderr
