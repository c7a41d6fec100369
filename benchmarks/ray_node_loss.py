#!/usr/bin/env python3
"""A worker node lost under load, on a multi-node Ray cluster simulated on this machine.

    nice -n 10 python benchmarks/ray_node_loss.py --out benchmarks/records/DATE-ray-node-loss

Two experiments, each on a fresh `ray.cluster_utils.Cluster` (Ray's own multi-node test cluster:
one head node with 0 CPUs, so no replica or actor lands there, and `--nodes` worker nodes with
one CPU each; every node is its own raylet, object store and worker pool on this machine):

1. **serve**: `lga-export serve --address <cluster>` with `--replicas` replicas of one CPU
   (placement shown: which worker node holds which replica), `--clients` clients sending a bounded
   number of requests (one connection per request, no retry), and a node holding a replica killed
   after `--kill-after` answers. Every request is counted once: answered (mask compared byte for
   byte with `predict`'s), failed with an HTTP error (clear: one-line JSON `{"error": ...}`; or
   not), refused (no connection, nothing sent), or lost (sent, then no HTTP answer: reset, closed
   or timed out). `/v1/health` is polled twice a second: time until it is green again.
2. **predict --ray**: `lga-export predict --ray --address <cluster>` over `--images` images, and
   the node of one runner actor killed once the first outputs are staged. It must finish with
   every output (masks byte-identical to `predict`'s) or fail with none published.

"Killed" is SIGKILL of the node's raylet and every process under it (its workers: replicas,
actors, the Serve proxy) at once, then `Cluster.remove_node` without a graceful stop: the node is
gone as if it lost power. Writes OUT/results.json, OUT/README.md, OUT/server.log, OUT/predict.log.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from lga_export.serve.harness import CLI, ServeDidNotStart, ServeProcess, free_port  # noqa: E402
# Serve's proxy must answer its readiness check within 5 s by default; on a 2-core machine shared
# with other work, starting several Ray nodes at once, it did not (the proxy was killed and the
# server exited). Applies to this simulated cluster only; set before its raylets start.
SLOW_MACHINE_ENV = {"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "30"}
REPLICA_CLASS = "LGASegmenter"
ACTOR_CLASS = "ChunkSegmenter"


# --- the machine ---

def machine() -> dict[str, Any]:
    """CPU model and flags, cores, memory, load, versions: what a reader needs to weigh the figures."""
    info: dict[str, Any] = {"cpu_model": platform.processor() or "unknown", "cpu_flags": [],
                            "logical_cores": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()]}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                info["cpu_model"] = value.strip()
            elif key.strip() == "flags" and not info["cpu_flags"]:
                info["cpu_flags"] = value.split()
        meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        info["memory_gib"] = round(int(meminfo["MemTotal"].split()[0]) / 2**20, 1)
        info["memory_available_gib"] = round(int(meminfo["MemAvailable"].split()[0]) / 2**20, 1)
    except (OSError, KeyError, ValueError):
        pass
    info["simd"] = [f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")
                    if f in info["cpu_flags"]]
    versions = {"python": platform.python_version()}
    for name in ("ray", "torch", "onnxruntime", "fastapi", "uvicorn"):
        try:
            versions[name] = getattr(__import__(name), "__version__", "?")
        except ImportError:
            pass
    git = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    versions["lga_export_commit"] = git.stdout.strip() or "?"
    info["versions"] = versions
    return info


def top_processes(count: int = 5) -> list[str]:
    """What else used the CPU when the run started (a shared machine says so in the record)."""
    ps = subprocess.run(["ps", "-eo", "pcpu,rss,comm", "--sort=-pcpu"], capture_output=True, text=True)
    return [" ".join(line.split()) for line in ps.stdout.splitlines()[1:count + 1]]


# --- inputs and the reference ---

def prepare(count: int, model: Path, scratch: Path) -> tuple[Path, Path, list[tuple[str, bytes, str]], Path]:
    """Validation samples as PNG files and an LViT text table, and `predict`'s masks of them
    (PyTorch on one thread, as a one-CPU replica or actor runs it, so the masks must be equal)."""
    import torch
    from PIL import Image

    from lga_export.predict import predict_files
    from lga_export.samples import default_data_root, validation_samples

    samples, _ = validation_samples(count, default_data_root())
    folder = scratch / "img"
    folder.mkdir()
    rows, inputs = [], []
    for index, sample in enumerate(samples):
        name = f"{index:03d}_{Path(sample.name).stem}.png"
        buffer = io.BytesIO()
        Image.fromarray(sample.rgb).save(buffer, format="PNG")
        (folder / name).write_bytes(buffer.getvalue())
        inputs.append((name, buffer.getvalue(), sample.text))
        rows.append('{},"{}"\n'.format(name, sample.text.replace('"', '""')))
    table = scratch / "text.csv"
    table.write_text("Image,Description\n" + "".join(rows))
    reference = scratch / "reference"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        predict_files(model, images=folder, text_file=table, out=reference)
    finally:
        torch.set_num_threads(threads)
    return folder, table, inputs, reference


# --- the simulated cluster ---

class SimCluster:
    """A head node (0 CPUs) and `nodes` one-CPU worker nodes on this machine; this process is a
    driver attached to the head, which reads where actors run and kills worker nodes."""

    def __init__(self, nodes: int) -> None:
        import ray
        from ray.cluster_utils import Cluster

        self.ray = ray
        saved = {name: os.environ.get(name) for name in SLOW_MACHINE_ENV}
        os.environ.update(SLOW_MACHINE_ENV)  # inherited by the raylets, hence by the Serve controller
        try:
            self.cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
            self.workers = {f"worker-{i + 1}": self.cluster.add_node(num_cpus=1) for i in range(nodes)}
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        self.cluster.wait_for_nodes()
        ray.init(address=self.cluster.address, logging_level="WARNING")
        self.names = {node.node_id: name for name, node in self.workers.items()}
        self.names[self.cluster.head_node.node_id] = "head"
        self.killed: list[str] = []
        self.start_attempts = 1

    @property
    def address(self) -> str:
        return self.cluster.address

    def actors(self, class_part: str) -> list[dict[str, Any]]:
        """Live actors whose class name contains `class_part`: node name and pid (the GCS actor
        table, ray._private.state: the one view of placement without the dashboard)."""
        found = []
        for actor in self.ray._private.state.actors().values():
            if class_part in actor.get("ActorClassName", "") and actor.get("State") == "ALIVE":
                node = actor.get("Address", {}).get("NodeID", "")
                found.append({"class": actor["ActorClassName"], "node": self.names.get(node, node[:12]),
                              "pid": actor.get("Pid")})
        return sorted(found, key=lambda a: (a["node"], a["pid"] or 0))

    def kill(self, name: str) -> float:
        """SIGKILL the node's raylet and every process under it at once, then remove the node
        without a graceful stop; returns the monotonic time of the kill."""
        node = self.workers.pop(name)
        raylet = node.all_processes["raylet"][0].process.pid
        victims = [raylet, *descendants(raylet)]
        when = time.monotonic()
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.cluster.remove_node(node, allow_graceful=False)
        self.killed.append(name)
        return when

    def shutdown(self) -> None:
        try:
            from ray import serve

            serve.shutdown()  # the controller and proxies, detached actors, go with the cluster
        except Exception:  # noqa: BLE001 - tearing down anyway
            pass
        self.ray.shutdown()
        self.cluster.shutdown()


def start_cluster(nodes: int, attempts: int = 3) -> SimCluster:
    """SimCluster, tried again when Ray gives up on a node that did not register within its fixed 30 s
    (seen on this 2-core machine under other work): what that attempt started is killed first."""
    for attempt in range(1, attempts + 1):
        try:
            cluster = SimCluster(nodes)
            cluster.start_attempts = attempt
            return cluster
        except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception for this
            if "timed out during startup" not in str(exc) or attempt == attempts:
                raise
            for pid in descendants(os.getpid()):  # this process starts nothing else before a cluster
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            print(f"the simulated cluster did not start (attempt {attempt}): {exc}; again in 30 s", file=sys.stderr)
            time.sleep(30)
    raise AssertionError("unreachable")


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc): a Ray node's workers are its raylet's children."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


# --- one request, counted once ---

def multipart(name: str, data: bytes, text: str) -> tuple[bytes, str]:
    from lga_export.serve.client import multipart as build

    return build({"text": text}, {"image": (name, data)})


def attempt(port: int, method: str, path: str, body: bytes | None, headers: dict[str, str],
            timeout: float) -> dict[str, Any]:
    """One request on its own connection, no retry: {"status", "body"} or {"outcome", "error"}."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    stage = "connect"
    try:
        connection.connect()
        stage = "send"
        connection.request(method, path, body=body, headers={**headers, "Connection": "close"})
        stage = "answer"
        response = connection.getresponse()
        return {"status": response.status, "body": response.read()}
    except (OSError, http.client.HTTPException) as exc:
        outcome = "refused" if stage == "connect" and isinstance(exc, ConnectionRefusedError) else "lost"
        return {"outcome": outcome, "error": f"{type(exc).__name__} at {stage}: {exc}"[:200]}
    finally:
        connection.close()


def classify(answer: dict[str, Any], expected: bytes) -> dict[str, Any]:
    """answered (mask right or wrong) / failed (clear: one-line JSON error, or unclear) / refused / lost."""
    import base64

    if "outcome" in answer:
        return {"outcome": answer["outcome"], "error": answer["error"]}
    status, body = answer["status"], answer["body"]
    if status == 200:
        mask = base64.b64decode(json.loads(body)["mask_png"])
        return {"outcome": "answered", "status": 200, "mask": "right" if mask == expected else "wrong"}
    try:
        message = json.loads(body)["error"]
        clear = isinstance(message, str) and "\n" not in message and bool(message.strip())
    except (ValueError, KeyError, TypeError):
        message, clear = body[:200].decode("utf-8", "replace"), False
    return {"outcome": "failed", "status": status, "clear": clear, "error": str(message)[:300]}


# --- the serve experiment ---

@dataclass
class Load:
    """`clients` closed-loop clients sending at most `requests` requests over the inputs."""

    port: int
    inputs: list[tuple[str, bytes, str]]
    expected: dict[str, bytes]
    headers: dict[str, str]
    clients: int
    requests: int
    timeout: float
    start: float = field(default_factory=time.monotonic)
    records: list[dict[str, Any]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: int = 0

    def run(self) -> list[threading.Thread]:
        threads = [threading.Thread(target=self._client, daemon=True) for _ in range(self.clients)]
        for thread in threads:
            thread.start()
        return threads

    def answered(self) -> int:
        with self.lock:
            return sum(r["outcome"] == "answered" for r in self.records)

    def _client(self) -> None:
        while True:
            with self.lock:
                if self.stop.is_set() or self.sent >= self.requests:
                    return
                index, self.sent = self.sent, self.sent + 1
            name, data, text = self.inputs[index % len(self.inputs)]
            body, content_type = multipart(name, data, text)
            sent = time.monotonic() - self.start
            answer = attempt(self.port, "POST", "/v1/segment", body,
                             {**self.headers, "Content-Type": content_type, "Accept": "application/json"}, self.timeout)
            record = classify(answer, self.expected[name])
            record.update(index=index, image=name, sent_s=round(sent, 3),
                          done_s=round(time.monotonic() - self.start, 3))
            with self.lock:
                self.records.append(record)


def poll_health(port: int, start: float, stop: threading.Event, into: list[dict[str, Any]]) -> None:
    """GET /v1/health twice a second until `stop`: (time, status, application, replicas)."""
    while not stop.is_set():
        when = time.monotonic() - start
        answer = attempt(port, "GET", "/v1/health", None, {}, 5.0)
        entry: dict[str, Any] = {"t_s": round(when, 2), "status": answer.get("status", answer.get("outcome"))}
        try:
            body = json.loads(answer.get("body", b"{}"))
            entry.update(application=body.get("application"), replicas=body.get("replicas"))
        except ValueError:
            pass
        into.append(entry)
        stop.wait(0.5)


class Server(ServeProcess):
    """`lga-export serve --address <cluster>` in a subprocess, its output in a log file."""

    def __init__(self, address: str, port: int, options: list[str], key_file: Path, log: Path) -> None:
        super().__init__(["--address", address, *options, "--api-key-file", str(key_file)], port=port, log=log,
                         cwd=REPO)

    def wait_ready(self, timeout: float, tail: int = 15) -> float:
        try:
            return super().wait_ready(timeout, tail)
        except ServeDidNotStart as exc:
            raise SystemExit(str(exc)) from None


def serve_experiment(args: argparse.Namespace, proxies: str, inputs: list[tuple[str, bytes, str]], reference: Path,
                     scratch: Path, out: Path) -> dict[str, Any]:
    """Serve on the cluster (`proxies`: --proxy-location), load it, kill a replica's node mid-load,
    count and time everything."""
    expected = {name: (reference / f"{Path(name).stem}_mask.png").read_bytes() for name, _, _ in inputs}
    key = secrets.token_urlsafe(24)
    key_file = scratch / "api-key"
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    cluster = start_cluster(args.nodes)
    server = None
    result: dict[str, Any] = {"proxy_location": proxies, "cluster_start_attempts": cluster.start_attempts,
                              "nodes": ["head (0 CPUs)"] + [f"{n} (1 CPU)" for n in cluster.workers]}
    try:
        port = free_port()
        launched = time.monotonic()
        options = ["--model", str(args.model), "--replicas", str(args.replicas), "--cpus-per-replica", "1", "--max-batch", "1",
                   "--proxy-location", proxies]
        server = Server(cluster.address, port, options, key_file, out / f"server-{proxies}.log")
        server.wait_ready(args.startup_timeout)
        shown = ["lga-export", *server.command[len(CLI):]]
        result.update(command=" ".join(shown).replace(str(key_file), "KEYFILE").replace(f"{REPO}/", ""),
                      startup_s=round(time.monotonic() - launched, 1))
        result["placement_before"] = placement = cluster.actors(REPLICA_CLASS)
        proxy_placement = cluster.actors("ProxyActor")
        result["health_actor_before"] = cluster.actors("LGAHealth")
        spread = {a["node"] for a in placement}
        if len(spread) < 2 or "head" in spread:
            raise SystemExit(f"the replicas are not spread over two worker nodes: {placement}")
        load = Load(port, inputs, expected, {"Authorization": f"Bearer {key}"}, args.clients, args.requests,
                    args.timeout)
        result.update(run_load(args, cluster, load, port, placement[0]["node"]))
        result["placement_after"] = cluster.actors(REPLICA_CLASS)
        result["proxies_before"] = proxy_placement
        result["proxies_after"] = cluster.actors("ProxyActor")
        result["health_actor_after"] = cluster.actors("LGAHealth")
    finally:
        if server is not None:
            result["server_exit"] = server.stop()
        cluster.shutdown()
    return result


def run_load(args: argparse.Namespace, cluster: SimCluster, load: Load, port: int, victim: str) -> dict[str, Any]:
    """The load and the health poll; `victim` killed after `kill_after` answers; the poll goes on
    until the deployment is back at full strength (or `recovery_timeout` after the kill)."""
    health: list[dict[str, Any]] = []
    stop_health = threading.Event()
    poller = threading.Thread(target=poll_health, args=(port, load.start, stop_health, health), daemon=True)
    poller.start()
    threads = load.run()
    deadline = load.start + args.duration
    while load.answered() < args.kill_after and time.monotonic() < deadline:
        time.sleep(0.05)
    kill_s = cluster.kill(victim) - load.start
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    load.stop.set()
    for thread in threads:
        thread.join(args.timeout + 5)
    give_up = load.start + kill_s + args.recovery_timeout
    while time.monotonic() < give_up and not full_strength_after(health, kill_s, args.replicas):
        time.sleep(0.5)
    stop_health.set()
    poller.join(10)
    return {"killed_node": victim, "kill_s": round(kill_s, 2), "load_wall_s": round(time.monotonic() - load.start, 1),
            "requests": summarise_requests(load.records, kill_s), "recovery": recovery(health, kill_s, args.replicas),
            "health": health, "records": sorted(load.records, key=lambda r: r["index"])}


def full_strength(entry: dict[str, Any], target: int) -> bool:
    return entry["status"] == 200 and (entry.get("replicas") or {}).get("RUNNING", 0) >= target


def full_strength_after(health: list[dict[str, Any]], kill_s: float, target: int) -> bool:
    after = [h for h in list(health) if h["t_s"] >= kill_s]
    degraded = [i for i, h in enumerate(after) if not full_strength(h, target)]
    return bool(degraded) and any(full_strength(h, target) for h in after[degraded[-1] + 1:])


def recovery(health: list[dict[str, Any]], kill_s: float, target: int) -> dict[str, Any]:
    """From the health polls after the kill: when /v1/health went red and green again, and when the
    deployment was degraded (fewer than `target` replicas running) and back at full strength."""
    after = [h for h in health if h["t_s"] >= kill_s]
    red = [i for i, h in enumerate(after) if h["status"] != 200]
    degraded = [i for i, h in enumerate(after) if not full_strength(h, target)]

    def since_kill(index: int | None) -> float | None:
        return None if index is None else round(after[index]["t_s"] - kill_s, 2)

    def first_good(start: int, good: Any) -> int | None:
        return next((i for i in range(start, len(after)) if good(after[i])), None)

    return {
        "health_polls_after_kill": len(after), "health_red_polls": len(red),
        "health_first_red_s": since_kill(red[0]) if red else None,
        "health_green_again_s": since_kill(first_good(red[-1] + 1, lambda h: h["status"] == 200)) if red else 0.0,
        "degraded_first_s": since_kill(degraded[0]) if degraded else None,
        "full_strength_again_s": (since_kill(first_good(degraded[-1] + 1, lambda h: full_strength(h, target)))
                                  if degraded else None),
        "health_red_answers": sorted({f"{h['status']} {h.get('application')}" for i, h in enumerate(after) if i in red}),
    }


def summarise_requests(records: list[dict[str, Any]], kill_s: float) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for record in records:
        key = record["outcome"]
        if key == "failed":
            key = "failed_clear" if record["clear"] else "failed_unclear"
        counts[key] = counts.get(key, 0) + 1
    bad = [r for r in records if r["outcome"] != "answered"]
    errors: dict[str, int] = {}
    for record in bad:
        label = f"{record.get('status', record['outcome'])}: {record['error'][:160]}"
        errors[label] = errors.get(label, 0) + 1
    return {"sent": len(records), "answered": counts.get("answered", 0), "failed_clear": counts.get("failed_clear", 0),
            "failed_unclear": counts.get("failed_unclear", 0), "refused": counts.get("refused", 0),
            "lost": counts.get("lost", 0),
            "masks_right": sum(r.get("mask") == "right" for r in records),
            "masks_wrong": sum(r.get("mask") == "wrong" for r in records),
            "answered_before_kill": sum(r["outcome"] == "answered" and r["done_s"] < kill_s for r in records),
            "not_answered_window_s": ([round(min(r["sent_s"] for r in bad) - kill_s, 2),
                                       round(max(r["done_s"] for r in bad) - kill_s, 2)] if bad else None),
            "errors": errors}


# --- the predict --ray experiment ---

def predict_experiment(args: argparse.Namespace, folder: Path, table: Path, reference: Path, scratch: Path,
                       out: Path) -> dict[str, Any]:
    """`predict --ray` on the cluster; the node of a runner actor killed once outputs are staged."""
    stems = sorted(Path(name).stem for name in os.listdir(folder))
    names = [f"{stem}_{kind}.png" for stem in stems for kind in ("mask", "overlay")]
    dest = scratch / "predict-ray"
    cluster = start_cluster(args.nodes)
    command = [*CLI, "predict", "--ray", "--model", str(args.model), "--address", cluster.address,
               "--workers", str(args.workers),
               "--images", str(folder), "--text-file", str(table), "--out", str(dest)]
    shown = " ".join(["lga-export", *command[len(CLI):]]).replace(str(scratch), "SCRATCH").replace(f"{REPO}/", "")
    result: dict[str, Any] = {"command": shown,
                              "images": len(stems), "cluster_start_attempts": cluster.start_attempts, "nodes": ["head (0 CPUs)"] + [f"{n} (1 CPU)" for n in cluster.workers]}
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    with (out / "predict.log").open("w") as log:
        started = time.monotonic()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        try:
            result.update(kill_mid_job(cluster, process, dest, len(names), started))
            result["actors_seen_after_kill"] = watch_actors(cluster, process, started + args.predict_timeout)
            result["exit_code"] = process.wait(max(1.0, started + args.predict_timeout - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            result["exit_code"] = f"killed after {args.predict_timeout} s (did not finish)"
            process.wait(30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(30)
            result["wall_s"] = round(time.monotonic() - started, 1)
            cluster.shutdown()
    lines = [line for line in (out / "predict.log").read_text().splitlines() if line.strip()]
    result["last_line"] = lines[-1][:300] if lines else ""
    published = [name for name in names if (dest / name).exists()]
    right = sum((dest / n).read_bytes() == (reference / n).read_bytes() for n in published if n.endswith("_mask.png"))
    result.update(outputs_expected=len(names), outputs_published=len(published), masks_identical=right,
                  staging_left=[p.name for p in dest.glob(".staged.*")] if dest.exists() else [])
    complete = result["exit_code"] == 0 and len(published) == len(names) and right == len(stems)
    result["verdict"] = ("all outputs, masks identical" if complete else
                         "failed, none published" if result["exit_code"] != 0 and not published else
                         "VIOLATION: partial or wrong outputs")
    return result


def runner_actors(cluster: SimCluster) -> list[dict[str, Any]]:
    return [a for a in cluster.actors("") if ACTOR_CLASS in a["class"] or "MapWorker" in a["class"]]


def watch_actors(cluster: SimCluster, process: subprocess.Popen, deadline: float) -> list[dict[str, Any]]:
    """Every runner actor seen alive after the kill, until the job ends: where work was re-placed."""
    seen: dict[int, dict[str, Any]] = {}
    while process.poll() is None and time.monotonic() < deadline:
        try:
            for actor in runner_actors(cluster):
                seen.setdefault(actor["pid"], actor)
        except Exception:  # noqa: BLE001 - the GCS may be busy with the dead node; try again
            pass
        time.sleep(1.0)
    return sorted(seen.values(), key=lambda a: (a["node"], a["pid"] or 0))


def kill_mid_job(cluster: SimCluster, process: subprocess.Popen, dest: Path, total: int,
                 started: float) -> dict[str, Any]:
    """Wait until some (not all) outputs are staged, then kill the node of a runner actor."""
    while process.poll() is None:
        staged = sum(len(list(d.iterdir())) for d in dest.glob(".staged.*.partial")) if dest.exists() else 0
        if 2 <= staged < total:
            actors = runner_actors(cluster)
            workers = [a for a in actors if a["node"] != "head"]
            if workers:
                victim = workers[0]["node"]
                kill_s = cluster.kill(victim) - started
                return {"killed_node": victim, "kill_s": round(kill_s, 2), "staged_at_kill": staged,
                        "actors_before": actors}
        time.sleep(0.05)
    return {"killed_node": None, "note": "the job ended before any output was staged and a node could be killed"}


# --- the record ---

def where(placement: list[dict[str, Any]]) -> str:
    return ", ".join(f"{a['node']} (pid {a['pid']})" for a in placement) or "none"


def render_serve(serve: dict[str, Any]) -> list[str]:
    r, rec = serve["requests"], serve["recovery"]
    window = r["not_answered_window_s"]
    return [
        f"## serve, `--proxy-location {serve['proxy_location']}`: a replica's node killed under load", "",
        f"    {serve['command']}", "",
        f"Cluster: {', '.join(serve['nodes'])}. Ready {serve['startup_s']} s after launch. Replicas before the kill: "
        f"{where(serve['placement_before'])}; after: {where(serve['placement_after'])}. Serve's HTTP proxies "
        f"before: {where(serve['proxies_before'])}; the /v1/health replica: "
        f"{where(serve.get('health_actor_before', []))}. Killed: "
        f"**{serve['killed_node']}**, {serve['kill_s']} s into the load, after {r['answered_before_kill']} answers.",
        "",
        "| sent | answered | mask right | mask wrong | failed, clear error | failed, unclear | refused | lost |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {r['sent']} | {r['answered']} | {r['masks_right']} | {r['masks_wrong']} | {r['failed_clear']} | "
        f"{r['failed_unclear']} | {r['refused']} | {r['lost']} |", "",
        f"- Requests not answered: "
        + (f"sent {window[0]} s to {window[1]} s after the kill: "
           + "; ".join(f"{n} x `{e}`" for e, n in r["errors"].items()) if window else "none") + ".",
        f"- `/v1/health` after the kill: {rec['health_red_polls']} of {rec['health_polls_after_kill']} polls not 200"
        + (f" (first {rec['health_first_red_s']} s after the kill, green again at {rec['health_green_again_s']} s; "
           f"answers {', '.join(rec['health_red_answers'])})" if rec["health_red_polls"] else " (it stayed green: a "
           "replica was still running)") + ".",
        f"- Deployment degraded (fewer replicas running than wanted, as /v1/health reports) from "
        f"{rec['degraded_first_s']} s after the kill; back at full strength {rec['full_strength_again_s']} s after "
        f"the kill.",
        f"- Load wall time {serve['load_wall_s']} s; server exit code after SIGTERM: {serve.get('server_exit')}.", ""]


def render_predict(job: dict[str, Any]) -> list[str]:
    lines = ["## predict --ray: a runner actor's node killed mid-job", "", f"    {job['command']}", "",
             f"Cluster: {', '.join(job['nodes'])}; {job['images']} images."]
    if job.get("killed_node"):
        lines.append(f"Runner actors before the kill: {where(job['actors_before'])}. Killed: **{job['killed_node']}**,"
                     f" {job['kill_s']} s after launch, with {job['staged_at_kill']} of {job['outputs_expected']} "
                     f"outputs staged.")
    else:
        lines.append(f"**No node was killed**: {job.get('note')}.")
    if job.get("killed_node"):
        survivors = [a for a in job.get("actors_seen_after_kill", []) if a["node"] != job["killed_node"]]
        lines.append(f"Runner actors seen alive after the kill, on the nodes left: {where(survivors)} (the dead "
                     f"node's actor stays listed until the GCS marks the node dead).")
    lines += ["", f"- Result: **{job['verdict']}**: exit code {job['exit_code']}, {job['outputs_published']} of "
              f"{job['outputs_expected']} outputs published, {job['masks_identical']} masks byte-identical to "
              f"`predict`'s, staging folders left: {len(job['staging_left'])}; {job['wall_s']} s in all.",
              f"- Last line of its output: `{job['last_line']}`", ""]
    return lines


def render(record: dict[str, Any]) -> str:
    env = record["machine"]
    lines = [f"# A lost Ray worker node: `serve` and `predict --ray` ({record['date']})", "",
             f"    nice -n 10 python benchmarks/ray_node_loss.py {record['arguments']}", "",
             f"Machine: {env['cpu_model']}, {env['logical_cores']} logical cores (SIMD: {', '.join(env['simd'])}), "
             f"{env.get('memory_gib')} GiB; load average {env['load_average']} at the start, "
             f"{record['load_average_end']} at the end. Busiest processes at the start: "
             f"{'; '.join(record['top_processes'])}.",
             f"Versions: {', '.join(f'{k} {v}' for k, v in env['versions'].items())}.",
             f"Model: `{record['model']}` on PyTorch FP32, one thread per replica or actor (`--max-batch 1`, so "
             f"every served mask must equal `predict`'s byte for byte); the reference masks are `predict`'s on "
             f"one thread. {record['wall_s']} s in all.", "",
             "The cluster is `ray.cluster_utils.Cluster`: every node its own raylet, object store and workers, "
             "all on this machine. Killing a node: SIGKILL of its raylet and every process under it at once, "
             "then `remove_node` without a graceful stop. Serve's proxy readiness timeout was raised for this "
             f"loaded machine: {', '.join(f'{k}={v}' for k, v in record.get('cluster_env', {}).items())}.", ""]
    for serve in record.get("serve", []):
        lines += render_serve(serve)
    if "predict" in record:
        lines += render_predict(record["predict"])
    if record.get("notes"):  # added by hand to results.json, then --replot
        lines += ["## Notes", ""] + [f"- {note}" for note in record["notes"]] + [""]
    return "\n".join(lines)


def write(record: dict[str, Any], out: Path) -> None:
    from lga_export.fileio import atomic_file

    with atomic_file(out / "results.json", force=True) as tmp:
        tmp.write_text(json.dumps(record, indent=1, default=str) + "\n")
    with atomic_file(out / "README.md", force=True) as tmp:
        tmp.write_text(render(record))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="record folder")
    parser.add_argument("--model", type=Path, help="checkpoint or export folder (default: the embedded tiny model, "
                        "small enough for one-CPU replicas)")
    parser.add_argument("--nodes", type=int, default=3, help="worker nodes (one CPU each)")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--clients", type=int, default=3, help="concurrent clients")
    parser.add_argument("--requests", type=int, default=400, help="most requests sent")
    parser.add_argument("--duration", type=float, default=240.0, help="most seconds of load")
    parser.add_argument("--kill-after", type=int, default=40, help="answers before the node is killed")
    parser.add_argument("--timeout", type=float, default=120.0, help="client timeout per request, s")
    parser.add_argument("--recovery-timeout", type=float, default=180.0, help="most s to wait for full strength")
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    parser.add_argument("--serve-images", type=int, default=8)
    parser.add_argument("--predict-images", type=int, default=48)
    parser.add_argument("--workers", type=int, default=2, help="predict --ray runner actors")
    parser.add_argument("--predict-timeout", type=float, default=600.0)
    parser.add_argument("--proxy-location", choices=["EveryNode", "HeadOnly"], action="append",
                        help="serve's --proxy-location, one serve experiment each (default: both)")
    parser.add_argument("--skip", choices=["serve", "predict"], action="append", default=[])
    parser.add_argument("--replot", action="store_true", help="only re-render OUT/README.md from OUT/results.json")
    args = parser.parse_args()
    if args.replot:
        write(json.loads((args.out / "results.json").read_text()), args.out)
        return 0
    if args.nodes < args.replicas + 1 or args.replicas < 2 or args.requests > 5000 or args.duration > 900:
        parser.error("give --replicas >= 2, --nodes > --replicas (a spare node to re-place on), "
                     "--requests <= 5000, --duration <= 900 (the test is bounded)")
    if args.model is None:
        from lga_export.loading import embedded_checkpoint

        args.model = embedded_checkpoint("tiny")
    args.model = args.model.resolve()
    started = time.monotonic()
    record: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
                              "top_processes": top_processes(), "arguments": " ".join(sys.argv[1:]),
                              "cluster_env": SLOW_MACHINE_ENV, "model": str(args.model.relative_to(REPO))
                              if args.model.is_relative_to(REPO) else str(args.model)}
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lga-node-loss-") as tmp:
        scratch = Path(tmp)
        folder, table, inputs, reference = prepare(max(args.serve_images, args.predict_images), args.model, scratch)
        record["serve"] = []
        for proxies in ([] if "serve" in args.skip else args.proxy_location or ["EveryNode", "HeadOnly"]):
            record["serve"].append(serve_experiment(args, proxies, inputs[:args.serve_images], reference, scratch,
                                                    args.out))
            write({**record, "wall_s": round(time.monotonic() - started), "load_average_end": machine()["load_average"]},
                  args.out)
        if "predict" not in args.skip:
            record["predict"] = predict_experiment(args, folder, table, reference, scratch, args.out)
    record.update(wall_s=round(time.monotonic() - started), load_average_end=machine()["load_average"])
    write(record, args.out)
    print(render(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
