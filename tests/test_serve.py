"""`lga-export serve` (Ray Serve) and `lga-export predict --ray` (Ray Data) on the embedded model.

One real server per module: the CLI in a subprocess on a free loopback port (a local Ray with 2
CPUs, one replica, dynamic batching on), hit with good and bad requests, then stopped with
SIGTERM. Served masks are compared byte for byte with `predict`'s mask files.

PyTorch's reductions depend on its thread count at the 1e-6 logit level, and Ray gives a 1-CPU
replica or actor one thread (OMP_NUM_THREADS=1), so the `predict` reference runs with one thread
too: then the two paths run the very same computation and the masks must be identical.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("ray", reason="ray is not installed (pip install \"lga-export[serve]\")")
pytest.importorskip("ray.serve", reason="ray[serve] is not installed (pip install \"lga-export[serve]\")")
pytest.importorskip("multipart", reason="python-multipart is not installed (pip install \"lga-export[serve]\")")

from lga_export.serve.client import Client, is_loopback, multipart, require_loopback  # noqa: E402

# Ray Data sets its own deprecated DataContext fields internally; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")

MAX_REQUEST_MB = 1
STARTUP_TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """`lga-export serve` in a subprocess; its output is collected by a reader thread."""

    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "lga_export.cli.main", "serve", "--port", str(self.port), *args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0"}
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip())
            if "ready at" in line:
                self.ready.set()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.5):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"lga-export serve did not come up (exit {self.process.returncode}):\n{self.output[-3000:]}")

    def stop(self, timeout: float = 90) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.reader.join(10)
        return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)


@pytest.fixture(scope="module")
def server():
    started = Server("--num-cpus", "2", "--replicas", "1", "--max-batch", "4", "--batch-wait-ms", "30",
                     "--max-request-mb", str(MAX_REQUEST_MB))
    started.wait_ready(STARTUP_TIMEOUT_S)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def one_thread_predict(tmp_path_factory, default_model, image_folder):
    """`predict` over the test images with PyTorch on one thread (see the module docstring)."""
    import torch

    from lga_export.predict import predict_files

    images, table = image_folder
    out = tmp_path_factory.mktemp("predict")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        predict_files(default_model, images=images, text_file=table, out=out)
    finally:
        torch.set_num_threads(threads)
    return out


def jobs(image_folder) -> list[tuple[Path, str]]:
    from lga_export.predict import collect_jobs

    images, table = image_folder
    return collect_jobs(None, None, images, table)


def test_loopback_guard() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("8.8.8.8") and not is_loopback("192.168.1.10")
    from lga_export.errors import LGAError

    with pytest.raises(LGAError, match="not a loopback"):
        require_loopback("http://10.1.2.3:8000")
    with pytest.raises(LGAError, match="not a loopback"):
        Client("http://example.com:8000")


def test_ready_line_health_and_model(server, default_model) -> None:
    from lga_export.checkpoint import model_digest

    assert f"ready at {server.url}/v1/segment in " in server.output
    client = Client(server.url)
    health = client.get("/v1/health")
    assert health.status == 200, health.body
    assert health.json()["status"] == "ok" and health.json()["replicas"] == {"RUNNING": 1}
    info = client.get("/v1/model").json()
    assert info["model"] == model_digest(default_model)
    assert info["backend"] == "torch" and info["precision"] == "fp32"
    assert info["config"]["preset"] == default_model.config.preset
    assert info["batching"] == {"max_batch": 4, "batch_wait_ms": 30.0}


def test_segment_matches_predict(server, image_folder, one_thread_predict) -> None:
    client = Client(server.url)
    for path, report in jobs(image_folder):
        expected = (one_thread_predict / f"{path.stem}_mask.png").read_bytes()
        answer = client.segment(path.read_bytes(), path.name, report)
        assert answer.status == 200, answer.body
        body = answer.json()
        assert answer.mask_png() == expected, f"{path.name}: served mask differs from predict's"
        mask = np.asarray(Image.open(io.BytesIO(answer.mask_png())))
        assert (body["height"], body["width"]) == mask.shape == Image.open(path).size[::-1]
        assert set(np.unique(mask)) <= {0, 255}
        assert body["foreground_fraction"] == pytest.approx((mask == 255).mean())
        assert body["backend"] == "torch" and len(body["model"]) == 64
        assert {"decode", "queue", "infer", "total"} <= set(body["timings_ms"])
    path, report = jobs(image_folder)[0]
    png = client.segment(path.read_bytes(), path.name, report, accept="image/png")
    assert png.status == 200 and png.headers["content-type"] == "image/png"
    assert png.body == (one_thread_predict / f"{path.stem}_mask.png").read_bytes()


def test_concurrent_requests_are_batched_and_agree(server, image_folder, one_thread_predict) -> None:
    """Dynamic batching: concurrent requests share batches; masks agree with predict's (a batch
    of other images may move a boundary pixel at the 1e-6 logit level, so agreement, not bytes)."""
    work = jobs(image_folder) * 2

    def send(job: tuple[Path, str]) -> tuple[Path, dict]:
        path, report = job
        answer = Client(server.url).segment(path.read_bytes(), path.name, report)
        assert answer.status == 200, answer.body
        return path, answer.json()

    with ThreadPoolExecutor(len(work)) as pool:
        answers = list(pool.map(send, work))
    assert max(body["batch_size"] for _, body in answers) > 1, "no two concurrent requests were batched"
    for path, body in answers:
        import base64

        served = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["mask_png"]))))
        expected = np.asarray(Image.open(one_thread_predict / f"{path.stem}_mask.png"))
        assert (served == expected).mean() > 0.999, path.name


def _error(answer, status: int, *words: str) -> None:
    assert answer.status == status, (answer.status, answer.body)
    body = answer.json()
    assert set(body) == {"error"} and "\n" not in body["error"] and body["error"]
    for word in words:
        assert word in body["error"], body["error"]


def test_bad_requests_get_4xx_and_the_replica_survives(server, image_folder) -> None:
    client = Client(server.url)
    path, report = jobs(image_folder)[0]
    image = path.read_bytes()
    _error(client.segment(b"this is not an image", "notes.png", report), 400, "notes.png", "not an image")
    _error(client.segment(image[: len(image) // 3], path.name, report), 400, path.name)  # truncated PNG
    _error(client.segment(b"", "empty.png", report), 400, "empty")
    _error(client.segment(image, path.name, "   \n"), 400, "empty report")
    _error(client.segment(image, path.name, None), 400, "missing", "text")
    _error(client.segment(None, path.name, report), 400, "missing", "image")
    body, content_type = multipart({"image": "not a file", "text": report}, {})
    _error(client.request("POST", "/v1/segment", body, {"Content-Type": content_type}), 400, "file upload")
    _error(client.request("POST", "/v1/segment", b'{"text": "x"}', {"Content-Type": "application/json"}), 415,
           "multipart")
    _error(client.request("POST", "/v1/segment", b"--x\r\ngarbage", {"Content-Type": "multipart/form-data"}), 400)
    oversized = os.urandom(MAX_REQUEST_MB * 1024 * 1024 + 1024)
    _error(client.segment(oversized, "huge.png", report), 413, "limit")
    _error(client.get("/v1/nothing-here"), 404)
    _error(client.get("/v1/segment"), 405)
    # the replica is alive and well: a good request, and health unchanged
    good = client.segment(image, path.name, report)
    assert good.status == 200, good.body
    health = client.get("/v1/health")
    assert health.status == 200 and health.json()["replicas"] == {"RUNNING": 1}


def test_predict_ray_matches_predict(tmp_path, image_folder, one_thread_predict) -> None:
    """predict --ray (two 1-CPU runner actors on a local Ray) writes predict's very files."""
    from lga_export.serve.batch import predict_files_ray

    images, table = image_folder
    out = tmp_path / "ray"
    written = predict_files_ray(None, images=images, text_file=table, out=out, workers=2, num_cpus=2, batch_size=2)
    expected = sorted(p.name for p in one_thread_predict.iterdir())
    assert sorted(p.name for p in written) == expected == sorted(p.name for p in out.iterdir())
    for name in expected:
        assert (out / name).read_bytes() == (one_thread_predict / name).read_bytes(), name


def test_predict_ray_all_or_nothing(tmp_path, image_folder) -> None:
    """A bad input fails before Ray starts and leaves nothing; existing outputs need --force."""
    from lga_export.errors import LGAError
    from lga_export.serve.batch import predict_files_ray

    images, table = image_folder
    broken = tmp_path / "img"
    broken.mkdir()
    for path in images.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    (broken / sorted(images.iterdir())[-1].name).write_bytes(b"not a png")
    out = tmp_path / "out"
    with pytest.raises(LGAError, match="not an image"):
        predict_files_ray(None, images=broken, text_file=table, out=out, workers=1, num_cpus=2)
    assert not out.exists()
    out.mkdir()
    mask = out / f"{sorted(images.iterdir())[0].stem}_mask.png"
    mask.write_bytes(b"keep")
    with pytest.raises(LGAError, match="already exists"):
        predict_files_ray(None, images=images, text_file=table, out=out, workers=1, num_cpus=2)
    assert mask.read_bytes() == b"keep" and [p.name for p in out.iterdir()] == [mask.name]


def test_serve_refuses_bad_options_in_one_line(tmp_path) -> None:
    from typer.testing import CliRunner

    from lga_export.cli.main import app

    runner = CliRunner()
    for args, words in [(["--model", str(tmp_path / "missing")], "no such"),
                        (["--backend", "nope"], "unknown backend"),
                        (["--max-batch", "0"], "--max-batch"),
                        (["--device", "cuda"], "--gpus-per-replica")]:
        result = runner.invoke(app, ["serve", *args])
        assert result.exit_code == 2, result.output
        assert words in result.output and "Traceback" not in result.output


def test_sigterm_stops_the_server_cleanly(server) -> None:
    """Last in the module: SIGTERM drains the replica, shuts Ray down and exits 0."""
    assert server.stop() == 0, server.output[-3000:]
    assert server.lines[-1] == "stopped", server.output[-3000:]
    with pytest.raises(OSError):
        Client(server.url, timeout=5).get("/v1/health")
