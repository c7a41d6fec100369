"""`lga-export serve` (Ray Serve) and `lga-export predict --ray` (Ray Data) on the embedded model.

One real server per module: the CLI in a subprocess on a free loopback port (a local Ray with 2
CPUs, one replica, dynamic batching on, an API key from a file, Ray's files in a folder of its
own), hit with good, bad, unauthenticated and slow requests and driven from a headless Chromium
through its page, its replica killed, then stopped with SIGTERM. Served masks are compared byte
for byte with `predict`'s mask files.

LGA_SERVE_RECORD=<folder> keeps the figures of the slow-client and replica-kill tests (JSON) and
the page's screenshots there (else the screenshots go to the test's temporary folder).

PyTorch's reductions depend on its thread count at the 1e-6 logit level, and Ray gives a 1-CPU
replica or actor one thread (OMP_NUM_THREADS=1), so the `predict` reference runs with one thread
too: then the two paths run the very same computation and the masks must be identical.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
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
from lga_export.serve.harness import ServeDidNotStart, ServeProcess  # noqa: E402

# Ray Data sets its own deprecated DataContext fields internally; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")

MAX_REQUEST_MB = 1
STARTUP_TIMEOUT_S = 240
BODY_TIMEOUT_S = 8
API_KEY = "lga-test-" + "3f9c2e71a4b85d60" * 2
XRAYS = 8  # the done-when of issue #23: the same masks as predict for 8 sample X-rays


@pytest.fixture(scope="module")
def ray_dir():
    """A short private folder for the server's Ray session (unix socket paths are limited to 107 bytes)."""
    folder = tempfile.mkdtemp(prefix="lga-ray-")
    yield Path(folder)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory, ray_dir):
    key_file = tmp_path_factory.mktemp("key") / "api-key"
    key_file.write_text(API_KEY + "\n")
    key_file.chmod(0o600)
    from lga_export.loading import embedded_checkpoint

    started = ServeProcess(["--model", str(embedded_checkpoint("tiny")), "--num-cpus", "2", "--replicas", "1",
                            "--max-batch", "4", "--batch-wait-ms", "30",
                            "--max-request-mb", str(MAX_REQUEST_MB), "--body-timeout-s", str(BODY_TIMEOUT_S),
                            "--api-key-file", str(key_file)], key=API_KEY,
                           env={"LGA_API_KEY": None, "RAY_TMPDIR": str(ray_dir)})  # Ray's logs in a folder of its own
    try:
        started.wait_ready(STARTUP_TIMEOUT_S)
    except ServeDidNotStart as exc:
        pytest.fail(str(exc))
    yield started
    started.stop()


@pytest.fixture(scope="module")
def xray_folder(tmp_path_factory, data_root) -> tuple[Path, Path]:
    """Eight X-rays (QaTa when present, else built-in samples) as PNGs, and an LViT text table."""
    from lga_export.samples import validation_samples

    folder = tmp_path_factory.mktemp("xrays")
    images = folder / "img"
    images.mkdir()
    samples, _ = validation_samples(XRAYS, data_root)
    rows = []
    for sample in samples:
        name = Path(sample.name).with_suffix(".png").name
        Image.fromarray(sample.rgb).save(images / name)
        rows.append(f'{name},"{sample.text}"\n')
    table = folder / "text.csv"
    table.write_text("Image,Description\n" + "".join(rows))
    return images, table


@pytest.fixture(scope="module")
def image_folder(xray_folder) -> tuple[Path, Path]:
    """The module's X-rays (overrides conftest's three, so predict runs once over all of them)."""
    return xray_folder


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

    assert f"ready at {server.url}/v1/segment in " in server.output and "API key required" in server.output
    client = server.client()
    health = client.get("/v1/health")
    assert health.status == 200, health.body
    assert health.json()["status"] == "ok" and health.json()["replicas"] == {"RUNNING": 1}
    info = client.get("/v1/model").json()
    assert info["model"] == model_digest(default_model)
    assert info["backend"] == "torch" and info["precision"] == "fp32"
    assert info["config"]["preset"] == default_model.config.preset
    assert info["batching"] == {"max_batch": 4, "batch_wait_ms": 30.0}
    assert info["auth"] is True and info["limits"]["body_timeout_s"] == BODY_TIMEOUT_S
    assert API_KEY not in json.dumps(info)


def test_segment_matches_predict(server, image_folder, one_thread_predict) -> None:
    """With the key: the masks of 8 sample X-rays are predict's, byte for byte."""
    client = server.client()
    assert len(jobs(image_folder)) == XRAYS
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
    work = jobs(image_folder)[:4] * 2

    def send(job: tuple[Path, str]) -> tuple[Path, dict]:
        path, report = job
        answer = server.client().segment(path.read_bytes(), path.name, report)
        assert answer.status == 200, answer.body
        return path, answer.json()

    with ThreadPoolExecutor(len(work)) as pool:
        answers = list(pool.map(send, work))
    assert max(body["batch_size"] for _, body in answers) > 1, "no two concurrent requests were batched"
    for path, body in answers:
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
    client = server.client()
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


SLOW_CLIENTS = 20
DEFAULT_MAX_UPLOADS = 8


@pytest.fixture(scope="module")
def record_dir(tmp_path_factory) -> Path:
    """Where figures and screenshots go: $LGA_SERVE_RECORD, else a temporary folder."""
    chosen = os.environ.get("LGA_SERVE_RECORD")
    folder = Path(chosen) if chosen else tmp_path_factory.mktemp("record")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _form(parts: list[tuple[str, str | None, bytes]]) -> tuple[bytes, str]:
    """A multipart body from (field, file name or None, bytes) parts in this order, repeats allowed."""
    boundary = "lga-test-7d41c0"
    chunks = []
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        chunks.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def _dicom(gray: np.ndarray, frames: bytes | None = None, **attrs: str) -> bytes:
    """An 8-bit MONOCHROME2 DICOM of `gray`; `frames` replaces the NumberOfFrames value's bytes
    (pydicom refuses to write a malformed one, so it is patched in the written file)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID, "DX"
    ds.Rows, ds.Columns = gray.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.NumberOfFrames = "1"
    ds.PixelData = np.ascontiguousarray(gray, dtype=np.uint8).tobytes()
    for key, value in attrs.items():
        setattr(ds, key, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    if frames is not None:
        tag = b"\x28\x00\x08\x00IS"  # (0028,0008) NumberOfFrames, explicit VR little endian
        at = data.index(tag)
        old_length = int.from_bytes(data[at + 6:at + 8], "little")
        data = data[:at + 6] + len(frames).to_bytes(2, "little") + frames + data[at + 8 + old_length:]
    return data


def test_without_the_key_401_except_health_and_page(server, image_folder) -> None:
    """Issue #23: without the key 401 (one line, the model never reached) for /v1/segment and
    /v1/model, also with a wrong key or scheme; /v1/health and the page stay open."""
    anonymous = Client(server.url)
    path, report = jobs(image_folder)[0]
    for headers in ({}, {"Authorization": "Bearer " + API_KEY[:-1] + "x"}, {"Authorization": "Basic " + API_KEY},
                    {"Authorization": API_KEY}, {"Authorization": "Bearer"}):
        body, content_type = multipart({"text": report}, {"image": (path.name, path.read_bytes())})
        answer = anonymous.request("POST", "/v1/segment", body, {"Content-Type": content_type, **headers})
        _error(answer, 401, "API key")
        assert answer.headers["www-authenticate"].startswith("Bearer")
        _error(anonymous.request("GET", "/v1/model", None, headers), 401, "API key")
    assert anonymous.get("/v1/health").status == 200
    page = anonymous.get("/")
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert API_KEY not in page.body.decode()
    assert server.client().get("/v1/model").status == 200


def test_the_page_loads_nothing_from_elsewhere() -> None:
    """No external asset: no URL in the page, and its policy allows exactly its inline blocks."""
    from lga_export.serve.page import page

    html, policy = page()
    text = html.decode()
    assert not re.search(r"""\b(src|href|action)=["']|https?://|@import|url\(""", text, flags=re.I), "external reference"
    assert re.findall(r"""\.src = "([a-z]+:)""", text) == ["data:"]  # the only image source the script sets
    assert text.count("<script>") == 1 and text.count("<style>") == 1
    assert "'unsafe-inline'" not in policy and "connect-src 'self'" in policy


def test_ambiguous_forms_and_bad_dicoms_are_400(server, image_folder) -> None:
    """Issue #21: repeated image/text fields and a plain text field that is not UTF-8 are refused
    (never the last one, never a latin-1 guess); a DICOM whose NumberOfFrames is malformed is a
    400 naming the upload, not a 500. A genuine UTF-8 accented report still segments."""
    client = server.client()
    (path, report), (other, _) = jobs(image_folder)[:2]
    image = path.read_bytes()
    cases = [
        ([("image", path.name, image), ("image", other.name, other.read_bytes()), ("text", None, report.encode())],
         ["'image' appears 2 times"]),
        ([("image", path.name, image), ("text", None, report.encode()), ("text", None, b"no finding")],
         ["'text' appears 2 times"]),
        ([("image", path.name, image), ("text", None, "Opacit\u00e9 in the left lung".encode("latin-1"))],
         ["'text'", "not utf-8 text"]),
    ]
    for parts, words in cases:
        body, content_type = _form(parts)
        _error(client.request("POST", "/v1/segment", body, {"Content-Type": content_type}), 400, *words)
    body, content_type = _form([("image", path.name, image), ("text", None, "Opacit\u00e9 gauche".encode())])
    assert client.request("POST", "/v1/segment", body, {"Content-Type": content_type}).status == 200
    gray = np.asarray(Image.open(path).convert("L"))
    assert client.segment(_dicom(gray), "xray.dcm", report).status == 200
    for frames in (b"ab", b"-1", b"1.5 "):
        _error(client.segment(_dicom(gray, frames=frames), "frames.dcm", report), 400, "frames.dcm")
    assert client.segment(image, path.name, report).status == 200


def _slow_upload(port: int, seconds: float, result: dict) -> None:
    """Headers of a 100 kB upload, then one byte every 2 s until the server answers."""
    started = time.monotonic()
    head = (f"POST /v1/segment HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {API_KEY}\r\n"
            f"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 100000\r\n\r\n")
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode())
        while time.monotonic() - started < seconds:
            readable, _, _ = select.select([sock], [], [], 2.0)
            if not readable:
                try:
                    sock.sendall(b"-")
                except OSError:
                    break
                continue
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    result["seconds"] = round(time.monotonic() - started, 2)
    head_bytes, _, body = received.partition(b"\r\n\r\n")
    result["status"] = int(head_bytes.split(b" ", 2)[1]) if head_bytes.startswith(b"HTTP/") else None
    result["error"] = json.loads(body or b"{}").get("error") if result["status"] else None


def test_slow_uploads_cannot_stall_the_server(server, image_folder, one_thread_predict, record_dir) -> None:
    """Issue #21: 20 clients that send headers and then one byte every 2 s take at most
    --max-uploads slots (the others get 503 after the 1 s grace, those 408 after --body-timeout-s);
    meanwhile /v1/health and a good request are answered at once."""
    results = [{} for _ in range(SLOW_CLIENTS)]
    threads = [threading.Thread(target=_slow_upload, args=(server.port, BODY_TIMEOUT_S + 40, r), daemon=True)
               for r in results]
    attack = time.monotonic()
    for thread in threads:
        thread.start()
    time.sleep(3)  # every slow upload is past its grace period: the upload slots are all taken
    client = server.client(timeout=30)
    started = time.monotonic()
    health = client.get("/v1/health")
    health_s = time.monotonic() - started
    path, report = jobs(image_folder)[0]
    started = time.monotonic()
    good = client.segment(path.read_bytes(), path.name, report)
    good_s = time.monotonic() - started
    sent_at = started - attack
    for thread in threads:
        thread.join(BODY_TIMEOUT_S + 45)
    assert health.status == 200 and good.status == 200, (health.body, good.body[:300])
    assert good.mask_png() == (one_thread_predict / f"{path.stem}_mask.png").read_bytes()
    statuses = sorted(str(r.get("status")) for r in results)
    assert statuses.count("408") == DEFAULT_MAX_UPLOADS and statuses.count("503") == SLOW_CLIENTS - DEFAULT_MAX_UPLOADS, \
        results
    for result in results:
        assert result["error"] and "\n" not in result["error"]
        assert ("--body-timeout-s" if result["status"] == 408 else "--max-uploads") in result["error"]
        if result["status"] == 408:
            assert result["seconds"] >= BODY_TIMEOUT_S - 0.5
    assert good_s < 20 and health_s < 10, (good_s, health_s)  # generous bounds; measured figures are recorded
    figures = {"slow_clients": SLOW_CLIENTS, "byte_every_s": 2, "max_uploads": DEFAULT_MAX_UPLOADS,
               "body_timeout_s": BODY_TIMEOUT_S, "good_request_sent_after_s": round(sent_at, 2),
               "good_request_s": round(good_s, 3), "health_s": round(health_s, 3),
               "slow_answers": sorted(((r["status"], r["seconds"]) for r in results), key=lambda x: (x[0], x[1]))}
    (record_dir / "slow-clients.json").write_text(json.dumps(figures, indent=1) + "\n")
    print(f"\nslow clients: {json.dumps(figures)}")


def test_no_request_content_in_the_logs(server, ray_dir, image_folder) -> None:
    """Issue #23: a DICOM whose PatientName is set (and one whose malformed NumberOfFrames
    carries a name, which pydicom would warn about), a report and a file name: none of them
    in the server's output or any of Ray's log files at the default level."""
    client = server.client()
    path, _ = jobs(image_folder)[0]
    gray = np.asarray(Image.open(path).convert("L"))
    secrets = ["Qzpatient", "QZFRAMES1", "qzreport", "qzfilename"]
    report = "qzreport: opacity in the lower left lung"
    good = client.segment(_dicom(gray, PatientName="Qzpatient^Sentinel"), "qzfilename.dcm", report)
    assert good.status == 200, good.body
    bad = client.segment(_dicom(gray, frames=b"QZFRAMES1 ", PatientName="Qzpatient^Sentinel"), "qzfilename.dcm",
                         report)
    _error(bad, 400, "qzfilename.dcm")
    _error(client.segment(b"not an image", "qzfilename.png", report), 400)
    time.sleep(3)  # Ray's log monitor forwards workers' output about once a second
    logs = {"server output": server.output}
    for file in ray_dir.rglob("*"):
        if file.is_file() and not file.is_symlink() and file.suffix in ("", ".log", ".out", ".err", ".txt", ".json"):
            logs[str(file)] = file.read_bytes().decode("utf-8", errors="replace")
    assert any("worker" in name for name in logs), sorted(logs)[:20]  # the replica's own log files were read
    leaks = [(name, secret) for name, text in logs.items() for secret in secrets if secret.lower() in text.lower()]
    assert not leaks, leaks


def test_predict_ray_matches_predict(tmp_path, image_folder, one_thread_predict) -> None:
    """predict --ray (two 1-CPU runner actors on a local Ray) writes predict's very files."""
    from lga_export.serve.ray_predict import predict_files_ray

    images, table = image_folder
    out = tmp_path / "ray"
    from lga_export.loading import embedded_checkpoint

    written = predict_files_ray(embedded_checkpoint("tiny"), images=images, text_file=table, out=out, workers=2,
                                num_cpus=2, batch_size=2)
    expected = sorted(p.name for p in one_thread_predict.iterdir())
    assert sorted(p.name for p in written) == expected == sorted(p.name for p in out.iterdir())
    for name in expected:
        assert (out / name).read_bytes() == (one_thread_predict / name).read_bytes(), name


def test_predict_ray_all_or_nothing(tmp_path, image_folder) -> None:
    """A bad input fails before Ray starts and leaves nothing; existing outputs need --force."""
    from lga_export.errors import LGAError
    from lga_export.serve.ray_predict import predict_files_ray

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
                        (["--device", "cuda"], "--gpus-per-replica"),
                        (["--body-timeout-s", "0"], "--body-timeout-s"),
                        (["--max-uploads", "0"], "--max-uploads"),
                        (["--api-key-file", str(tmp_path / "nokey")], "no such file")]:
        result = runner.invoke(app, ["serve", *args], env={"LGA_API_KEY": None})
        assert result.exit_code == 2, result.output
        assert words in result.output and "Traceback" not in result.output


def test_non_loopback_host_without_a_key_exits_2_in_one_line(tmp_path) -> None:
    """Issue #23: --host 0.0.0.0 without a key is refused before Ray starts, naming the flag
    that allows it; with a key file the same check passes (and the key is not echoed)."""
    env = {k: v for k, v in os.environ.items() if k != "LGA_API_KEY"}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "lga_export.cli.main", "serve", "--host", "0.0.0.0"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and "--allow-no-auth" in lines[0] and "--api-key-file" in lines[0], lines
    assert time.monotonic() - started < 60  # refused up front, not after starting Ray
    from lga_export.serve.auth import check_exposure

    check_exposure("0.0.0.0", has_key=True, allow_no_auth=False)
    check_exposure("0.0.0.0", has_key=False, allow_no_auth=True)
    check_exposure("127.0.0.1", has_key=False, allow_no_auth=False)
    check_exposure("localhost", has_key=False, allow_no_auth=False)


def test_api_key_sources_and_comparison(tmp_path) -> None:
    """The key from a file or $LGA_API_KEY, never both, never empty or short; a request passes
    only with 'Bearer <that key>'."""
    from lga_export.errors import LGAError
    from lga_export.serve.auth import authorized, key_digest, load_api_key

    key_file = tmp_path / "key"
    key_file.write_text(f"  {API_KEY}\n")
    assert load_api_key(key_file, {}) == API_KEY
    assert load_api_key(None, {"LGA_API_KEY": API_KEY}) == API_KEY
    assert load_api_key(None, {}) is None
    for source, environ, words in [(key_file, {"LGA_API_KEY": API_KEY}, "given twice"),
                                   (None, {"LGA_API_KEY": ""}, "empty"),
                                   (None, {"LGA_API_KEY": "short"}, "at least 16"),
                                   (None, {"LGA_API_KEY": "two words of a long key"}, "one word")]:
        with pytest.raises(LGAError, match=words):
            load_api_key(source, environ)
    digest = key_digest(API_KEY)
    assert authorized(f"Bearer {API_KEY}", digest) is None and authorized(f"bearer  {API_KEY} ", digest) is None
    assert authorized(None, None) is None  # no key configured: open
    for header in (None, "", "Bearer", f"Basic {API_KEY}", API_KEY, f"Bearer {API_KEY}x", f"Bearer {API_KEY[:-1]}"):
        reason = authorized(header, digest)
        assert reason is not None and "\n" not in reason and API_KEY not in reason


def _descendants(root: int) -> dict[int, str]:
    """pid -> command line of every process below `root` (the server's Ray workers among them)."""
    parents: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            except (OSError, IndexError, ValueError):
                continue
            parents[int(entry.name)] = (ppid, command)
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, command) in parents.items():
            if ppid == parent and pid not in found:
                found[pid] = command
                frontier.append(pid)
    return found


def _wait_health(client: Client, status: int, timeout: float) -> tuple[float, dict]:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            answer = client.get("/v1/health")
        except OSError:
            answer = None
        if answer is not None and answer.status == status:
            return time.monotonic() - started, answer.json()
        time.sleep(0.2)
    pytest.fail(f"/v1/health did not answer {status} within {timeout:.0f} s")


def _browser():
    """Headless Chromium from the system's packages through its own chromedriver; nothing is
    downloaded (no Selenium Manager). Skips, saying why, where either is not installed."""
    pytest.importorskip("selenium", reason="selenium is not installed (pip install -e \".[dev]\")")
    binary = next((shutil.which(name) for name in ("chromium", "chromium-browser") if shutil.which(name)), None)
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        pytest.skip("no headless browser here: the chromium and chromedriver commands are not installed "
                    "(Debian: apt-get install chromium chromium-driver; .ci/run installs them where it can)")
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager fetch a driver or a browser
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--window-size=1280,1100"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(executable_path=driver_path), options=options)


@pytest.fixture(scope="module")
def browser():
    driver = _browser()
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _page_state(driver) -> str:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 120, poll_frequency=0.2).until(
        lambda d: d.execute_script("return document.getElementById('result').dataset.state") in ("ready", "error"))
    return driver.execute_script("return document.getElementById('result').dataset.state")


def _open_page(driver, server) -> None:
    """The page, with the key typed in when it asks for one (once per browser session)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(server.url + "/")
    wait = WebDriverWait(driver, 60, poll_frequency=0.2)
    wait.until(lambda d: d.find_element(By.ID, "key-form").is_displayed() or
               d.find_element(By.ID, "model").text.startswith("Model "))
    if driver.find_element(By.ID, "key-form").is_displayed():
        driver.find_element(By.ID, "api-key").send_keys(server.key, Keys.ENTER)
        wait.until(lambda d: d.find_element(By.ID, "model").text.startswith("Model "))


def test_page_asks_for_the_key_once_and_is_usable_by_keyboard(server, browser) -> None:
    """Issue #23: the page asks for the API key (the focus in its field, the API's own 401 line
    shown), keeps it for the browser session, labels every control and reaches them with Tab."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    driver, wait = browser, WebDriverWait(browser, 60, poll_frequency=0.2)
    driver.get(server.url + "/")
    driver.execute_script("sessionStorage.clear()")
    driver.refresh()
    wait.until(lambda d: d.find_element(By.ID, "key-form").is_displayed())
    assert driver.find_element(By.ID, "error").text == Client(server.url).get("/v1/model").json()["error"]
    assert driver.switch_to.active_element.get_attribute("id") == "api-key"
    driver.switch_to.active_element.send_keys("a-wrong-key-of-some-length", Keys.ENTER)
    wait.until(lambda d: "wrong API key" in d.find_element(By.ID, "error").text)
    driver.find_element(By.ID, "api-key").send_keys(API_KEY, Keys.ENTER)
    digest = server.client().get("/v1/model").json()["model"]
    wait.until(lambda d: digest[:12] in d.find_element(By.ID, "model").text)
    assert not driver.find_element(By.ID, "key-form").is_displayed()
    driver.refresh()  # once per session: the key is not asked again
    wait.until(lambda d: digest[:12] in d.find_element(By.ID, "model").text)
    assert not driver.find_element(By.ID, "key-form").is_displayed()
    unlabelled = driver.execute_script(
        "return [...document.querySelectorAll('input, textarea, select')]"
        ".filter(e => !e.labels || e.labels.length === 0).map(e => e.id)")
    assert unlabelled == []
    driver.execute_script("document.activeElement && document.activeElement.blur()")
    order = []
    for _ in range(3):
        ActionChains(driver).send_keys(Keys.TAB).perform()
        order.append(driver.switch_to.active_element.get_attribute("id"))
    assert order == ["image", "report", "submit"]


def test_page_draws_predicts_mask(server, browser, image_folder, one_thread_predict, record_dir) -> None:
    """Issue #23: an X-ray and its report submitted from the page by keyboard (Ctrl+Enter): the
    mask the page received is predict's, the mask drawn over the image covers exactly its
    pixels, the fraction, digest and backend are shown, and it reads at a phone's width."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = browser
    driver.set_window_size(1280, 1100)
    _open_page(driver, server)
    path, report = jobs(image_folder)[1]
    expected = (one_thread_predict / f"{path.stem}_mask.png").read_bytes()
    driver.find_element(By.ID, "image").send_keys(str(path))
    box = driver.find_element(By.ID, "report")
    box.send_keys(report)
    box.send_keys(Keys.CONTROL, Keys.ENTER)
    assert _page_state(driver) == "ready", driver.find_element(By.ID, "error").text
    received = base64.b64decode(driver.execute_script("return window.lgaLast.mask_png"))
    assert received == expected, "the page received another mask than predict's"
    mask = np.asarray(Image.open(io.BytesIO(expected))) > 0
    width, height, drawn = driver.execute_script(
        "const c = document.getElementById('mask-layer');"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let bits = ''; for (let i = 3; i < d.length; i += 4) bits += d[i] > 0 ? '1' : '0';"
        "return [c.width, c.height, bits];")
    assert (height, width) == mask.shape
    assert np.array_equal(np.frombuffer(drawn.encode(), dtype=np.uint8).reshape(mask.shape) == ord("1"), mask)
    assert f"{100 * mask.mean():.2f} %" in driver.find_element(By.ID, "fraction").text
    digest = server.client().get("/v1/model").json()["model"]
    assert driver.find_element(By.ID, "digest").text == digest
    assert driver.find_element(By.ID, "backend").text.startswith("torch fp32")
    assert "infer" in driver.find_element(By.ID, "timings").text
    _full_page_screenshot(driver, 1280, record_dir / "page-desktop.png")
    driver.set_window_size(390, 844)  # a phone
    overflow = driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 1, f"the page is {overflow} px wider than a phone's screen"
    _full_page_screenshot(driver, 390, record_dir / "page-phone.png")
    driver.set_window_size(1280, 1100)


def _full_page_screenshot(driver, width: int, path: Path) -> None:
    driver.set_window_size(width, 900)
    height = driver.execute_script("return document.documentElement.scrollHeight + window.outerHeight - window.innerHeight")
    driver.set_window_size(width, min(height + 16, 4000))
    driver.save_screenshot(str(path))


def test_page_shows_the_api_error_for_a_bad_file(server, browser, image_folder, tmp_path, record_dir) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    if driver.current_url.rstrip("/") != server.url:  # else: the page of the last test, its mask shown
        _open_page(driver, server)
    _, report = jobs(image_folder)[0]
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"this is a text file, not an image")
    expected = server.client().segment(bad.read_bytes(), bad.name, report).json()["error"]
    driver.find_element(By.ID, "image").send_keys(str(bad))
    driver.find_element(By.ID, "report").clear()
    driver.find_element(By.ID, "report").send_keys(report)
    driver.find_element(By.ID, "submit").click()
    assert _page_state(driver) == "error"
    assert driver.find_element(By.ID, "error").text == expected and "notes.png" in expected
    assert not driver.find_element(By.ID, "result").is_displayed()  # no earlier mask beside the error
    _full_page_screenshot(driver, 1280, record_dir / "page-error.png")


def test_health_is_503_while_no_replica_runs(server, image_folder, one_thread_predict, record_dir) -> None:
    """Issue #21: /v1/health is the application's state from the Serve controller, answered
    outside the replica: with the only replica killed it says 503 (not a hang, not ok), and 200
    again once Serve has replaced it; then requests are served as before."""
    replicas = [pid for pid, command in _descendants(server.process.pid).items()
                if command.startswith("ray::ServeReplica:lga:LGASegmenter")]
    assert len(replicas) == 1, _descendants(server.process.pid)
    client = Client(server.url, timeout=15)
    assert client.get("/v1/health").status == 200
    os.kill(replicas[0], signal.SIGKILL)
    down_s, down = _wait_health(client, 503, 60)
    assert down["status"] in ("unavailable", "starting") and down["replicas"].get("RUNNING", 0) == 0, down
    up_s, up = _wait_health(client, 200, 240)
    up_s += down_s
    assert up["replicas"] == {"RUNNING": 1}
    path, report = jobs(image_folder)[0]
    answer = server.client().segment(path.read_bytes(), path.name, report)
    assert answer.status == 200 and answer.mask_png() == (one_thread_predict / f"{path.stem}_mask.png").read_bytes()
    figures = {"health_503_after_s": round(down_s, 2), "health_200_again_after_s": round(up_s, 2),
               "health_check_period_s": 2.0, "state_while_down": down}
    (record_dir / "replica-kill.json").write_text(json.dumps(figures, indent=1) + "\n")
    print(f"\nreplica kill: {json.dumps(figures)}")


def test_sigterm_stops_the_server_cleanly(server) -> None:
    """Last in the module: SIGTERM drains the replica, shuts Ray down and exits 0."""
    assert server.stop() == 0, server.output[-3000:]
    assert server.lines[-1] == "stopped", server.output[-3000:]
    with pytest.raises(OSError):
        Client(server.url, timeout=5).get("/v1/health")
