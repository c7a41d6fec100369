"""`lga-export serve`: the LGA segmenter as a Ray Serve deployment behind a small HTTP API.

Endpoints (FastAPI ingress on every replica):

* ``POST /v1/segment``: multipart form, ``image`` (a PNG/JPEG/TIFF/BMP/DICOM file, read by
  `imageio.read_image` like predict) and ``text`` (its report). Answers JSON with the mask as a
  base64 PNG (0/255, the image's own size, the bytes predict writes), or the PNG itself with
  ``Accept: image/png``.
* ``GET /v1/health``: 200 once the application is running (every replica of the deployment
  constructed, i.e. its runner active), else 503.
* ``GET /v1/model``: the model's digest, backend, precision, config and runner description.

Every replica opens its runner through the factory (`open_runner`) and segments through the
pipeline (`Segmenter`). Requests are batched with ``@serve.batch`` (``max_batch`` > 1) and run on
one inference thread per replica, so the event loop keeps reading and decoding uploads while a
batch runs. A bad request gets a 4xx and a one-line JSON error; it never reaches the runner.

No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations at
class-definition time, and string annotations would turn `request: Request` into a query field.
"""

import asyncio
import base64
import dataclasses
import json
import logging
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lga_export.errors import LGAError
from lga_export.serve import IMAGE_FIELD, RAY_MISSING, TEXT_FIELD, ray_available

if not ray_available():  # the CLI checks first; importing this module needs Ray
    raise ImportError(RAY_MISSING)

from fastapi import FastAPI, Request  # noqa: E402  (fastapi comes with ray[serve])
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import JSONResponse, Response  # noqa: E402
from ray import serve  # noqa: E402
from starlette.exceptions import HTTPException as StarletteHTTPException  # noqa: E402

APP_NAME = "lga"
DEPLOYMENT_NAME = "LGASegmenter"


@dataclass(frozen=True)
class ServeSettings:
    """What every replica needs to open its runner and check requests (JSON-serialisable)."""

    model: str | None = None  # export folder, engine folder, checkpoint; None: the embedded model
    backend: str | None = None
    precision: str = "fp32"
    device: str | None = None  # None: cuda with GPUs per replica or for TensorRT, else cpu
    threshold: float = 0.0
    max_batch: int = 8  # 1: no dynamic batching
    batch_wait_ms: float = 10.0
    max_request_mb: float = 20.0
    max_megapixels: float = 25.0
    threads: int | None = None  # CPU threads per replica, for backends that take a count (None: their default)

    @property
    def max_bytes(self) -> int:
        return int(self.max_request_mb * 1024 * 1024)


@dataclass(frozen=True)
class Scaling:
    replicas: int = 1
    min_replicas: int | None = None  # both set: autoscaling between them
    max_replicas: int | None = None
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0


class Reject(Exception):
    """A bad request: answered with `status` and {"error": message}, the replica carries on."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)


api = FastAPI(title="LGA segmentation", docs_url=None, redoc_url=None, openapi_url=None)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return error(exc.status_code, str(exc.detail))


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return error(400, f"bad request ({exc.errors()[:1]})")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it is over `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise Reject(400, "bad Content-Length header")
        if int(declared) > limit:
            raise Reject(413, f"request body of {int(declared):,} bytes is over the {limit:,}-byte limit "
                              f"(--max-request-mb); send a smaller image")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Reject(413, f"request body is over the {limit:,}-byte limit (--max-request-mb); send a smaller image")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_form(request: Request, limit: int) -> tuple[bytes, str, str]:
    """(image bytes, image file name, report) from the multipart form, or Reject."""
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise Reject(415, "send multipart/form-data with an image file field 'image' and the report in 'text' "
                          "(curl -F image=@xray.png -F text='...')")
    body = await read_body(request, limit)

    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=2, max_fields=8, max_part_size=limit)
    except StarletteHTTPException as exc:
        raise Reject(400, f"malformed multipart form ({exc.detail})") from None
    except Exception as exc:  # noqa: BLE001 - python-multipart's own errors
        raise Reject(400, f"malformed multipart form ({type(exc).__name__}: {exc})") from None
    try:
        image, text = form.get(IMAGE_FIELD), form.get(TEXT_FIELD)
        if image is None:
            raise Reject(400, "missing form field 'image' (the image file: PNG, JPEG, TIFF or DICOM)")
        if isinstance(image, str):
            raise Reject(400, "form field 'image' must be a file upload (curl -F image=@xray.png), not text")
        if text is None:
            raise Reject(400, "missing form field 'text' (the report of the image)")
        if not isinstance(text, str):
            try:
                text = (await text.read()).decode("utf-8")
            except UnicodeDecodeError:
                raise Reject(400, "form field 'text' is not UTF-8 text") from None
        if not text.strip():
            raise Reject(400, "empty report: form field 'text' must hold the image's report")
        data = await image.read()
        return data, image.filename or "upload", text
    finally:
        await form.close()


@dataclass
class _Job:
    rgb: np.ndarray
    text: str
    queued: float = dataclasses.field(default_factory=time.perf_counter)


@dataclass
class _Done:
    mask: np.ndarray
    finite: bool
    queue_ms: float
    infer_ms: float
    batch_size: int


@serve.deployment(name=DEPLOYMENT_NAME)
@serve.ingress(api)
class LGADeployment:
    """One replica: one active runner, one inference thread, dynamic batching in front of it."""

    def __init__(self, settings: dict[str, Any]) -> None:
        from lga_export.runtime.pipeline import Segmenter
        from lga_export.runtime.registry import open_runner, thread_options
        from lga_export.serve.codec import model_identity

        self.settings = ServeSettings(**settings)
        s = self.settings
        self.runner = open_runner(s.backend, s.model, s.precision, s.device, **thread_options(s.backend, s.threads))
        self.segmenter = Segmenter(self.runner)
        self.identity = model_identity(self.runner, s.model)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="lga-infer")
        self._status: tuple[float, dict[str, Any]] | None = None
        if s.max_batch > 1:
            self._segment_batch.set_max_batch_size(s.max_batch)
            self._segment_batch.set_batch_wait_timeout_s(s.batch_wait_ms / 1000)

    # --- inference ---
    def _run(self, jobs: list[_Job]) -> list[_Done]:
        start = time.perf_counter()
        results = self.segmenter.segment([j.rgb for j in jobs], [j.text for j in jobs], self.settings.threshold)
        infer_ms = (time.perf_counter() - start) * 1000
        return [_Done(r.mask, bool(np.isfinite(r.logits).all()), (start - j.queued) * 1000, infer_ms, len(jobs))
                for j, r in zip(jobs, results)]

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _segment_batch(self, jobs: list[_Job]) -> list[_Done]:
        return await asyncio.get_running_loop().run_in_executor(self.pool, self._run, jobs)

    async def _segment(self, job: _Job) -> _Done:
        if self.settings.max_batch > 1:
            return await self._segment_batch(job)
        return (await asyncio.get_running_loop().run_in_executor(self.pool, self._run, [job]))[0]

    # --- endpoints ---
    @api.post("/v1/segment")
    async def segment(self, request: Request) -> Response:
        from lga_export.serve.codec import decode_upload, mask_png

        start = time.perf_counter()
        try:
            data, filename, text = await read_form(request, self.settings.max_bytes)
            received = time.perf_counter()
            try:
                rgb = await asyncio.to_thread(decode_upload, data, filename,
                                              int(self.settings.max_megapixels * 1_000_000))
            except LGAError as exc:
                raise Reject(400, str(exc)) from None
            decoded = time.perf_counter()
            done = await self._segment(_Job(rgb, text))
            if not done.finite:
                return error(500, "the model produced NaN/Inf logits for this image; check the model's weights")
            inferred = time.perf_counter()
            png = await asyncio.to_thread(mask_png, done.mask)
        except Reject as exc:
            return error(exc.status, exc.message)
        except LGAError as exc:
            return error(400, str(exc))
        except Exception as exc:  # noqa: BLE001 - one request's failure is answered, the replica stays
            return error(500, f"internal error ({type(exc).__name__}: {' '.join(str(exc).split())[:300]})")
        end = time.perf_counter()
        height, width = done.mask.shape
        timings = {"receive": (received - start) * 1000, "decode": (decoded - received) * 1000,
                   "queue": done.queue_ms, "infer": done.infer_ms, "encode": (end - inferred) * 1000,
                   "total": (end - start) * 1000}
        timings = {k: round(v, 2) for k, v in timings.items()}
        fraction = float(done.mask.mean())
        accept = request.headers.get("accept", "").lower()
        if "image/png" in accept and "application/json" not in accept:
            return Response(png, media_type="image/png", headers={
                "X-LGA-Model": str(self.identity["model"]), "X-LGA-Foreground-Fraction": f"{fraction:.6f}",
                "X-LGA-Batch-Size": str(done.batch_size),
                "Server-Timing": ", ".join(f"{k};dur={v}" for k, v in timings.items())})
        return JSONResponse({
            "mask_png": base64.b64encode(png).decode("ascii"), "width": width, "height": height,
            "foreground_fraction": fraction, "model": self.identity["model"], "backend": self.identity["backend"],
            "precision": self.identity["precision"], "batch_size": done.batch_size, "timings_ms": timings,
        })

    @api.get("/v1/model")
    async def model(self) -> dict[str, Any]:
        s = self.settings
        return {**self.identity, "threshold": s.threshold,
                "batching": {"max_batch": s.max_batch, "batch_wait_ms": s.batch_wait_ms if s.max_batch > 1 else None},
                "limits": {"max_request_mb": s.max_request_mb, "max_megapixels": s.max_megapixels}}

    @api.get("/v1/health")
    async def health(self) -> JSONResponse:
        state = await asyncio.to_thread(self._application_state)
        return JSONResponse(state, status_code=200 if state["status"] == "ok" else 503)

    def _application_state(self) -> dict[str, Any]:
        """The application's state from the Serve controller, cached for a second."""
        now = time.monotonic()
        if self._status is not None and now - self._status[0] < 1.0:
            return self._status[1]
        state: dict[str, Any] = {"status": "ok", "model": self.identity["model"], "backend": self.identity["backend"]}
        try:
            app_name = serve.get_replica_context().app_name
            application = serve.status().applications[app_name]
            deployment = application.deployments[DEPLOYMENT_NAME]
            replicas = {str(getattr(k, "value", k)): v for k, v in deployment.replica_states.items()}
            app_status = str(getattr(application.status, "value", application.status))
            state.update(application=app_status, replicas=replicas)
            if app_status != "RUNNING":
                state["status"] = "starting"
        except Exception as exc:  # noqa: BLE001 - the controller is out of reach: this replica is up
            state["note"] = f"replica ready; application state unknown ({type(exc).__name__})"
        self._status = (now, state)
        return state

    def check_health(self) -> None:
        """Serve's periodic replica check: the runner must still be active."""
        if not self.runner.active:
            raise RuntimeError("the runner is no longer active")

    def __del__(self) -> None:
        pool, runner = getattr(self, "pool", None), getattr(self, "runner", None)
        if pool is not None:
            pool.shutdown(wait=False)
        if runner is not None:
            runner.deactivate()


# --- the driver: check, deploy, announce, wait for a signal, shut down ---

def resolve_settings(settings: ServeSettings, scaling: Scaling) -> ServeSettings:
    """Backend and device made explicit, the model path absolute, and the artefact verified here,
    so a wrong --model fails in one line before any replica starts."""
    from lga_export.serve.cluster import check_source

    model = settings.model
    if model is not None:
        path = Path(model).expanduser()
        if not path.exists():
            raise LGAError(f"{path}: no such export folder, engine folder or checkpoint")
        model = str(path.resolve())
    if settings.max_batch < 1:
        raise LGAError(f"--max-batch must be at least 1, not {settings.max_batch}")
    if settings.batch_wait_ms < 0:
        raise LGAError(f"--batch-wait-ms must not be negative, not {settings.batch_wait_ms}")
    if settings.max_request_mb <= 0 or settings.max_megapixels <= 0:
        raise LGAError("--max-request-mb and the pixel limit must be positive")
    if scaling.gpus_per_replica < 0 or scaling.cpus_per_replica <= 0:
        raise LGAError("--cpus-per-replica must be positive and --gpus-per-replica not negative")
    device = settings.device or ("cuda" if scaling.gpus_per_replica > 0 else None)
    backend, device = check_source(settings.backend, model, settings.precision, device)
    if device.startswith("cuda") and scaling.gpus_per_replica == 0:
        raise LGAError(f"{backend} on {device} needs a GPU per replica: add --gpus-per-replica 1 "
                       f"(or 0.5 to put two replicas on one GPU)")
    threads = settings.threads if device == "cpu" else None
    return dataclasses.replace(settings, model=model, backend=backend, device=device, threads=threads)


def deployment_options(settings: ServeSettings, scaling: Scaling) -> dict[str, Any]:
    actor: dict[str, Any] = {"num_cpus": scaling.cpus_per_replica}
    if scaling.gpus_per_replica:
        actor["num_gpus"] = scaling.gpus_per_replica
    options: dict[str, Any] = {
        "ray_actor_options": actor,
        "max_ongoing_requests": max(8, 2 * settings.max_batch),
        "max_constructor_retry_count": 2,
        "graceful_shutdown_timeout_s": 10,
    }
    if scaling.min_replicas is not None or scaling.max_replicas is not None:
        low = scaling.min_replicas if scaling.min_replicas is not None else 1
        high = scaling.max_replicas if scaling.max_replicas is not None else max(low, 1)
        if not 0 <= low <= high or high < 1:
            raise LGAError(f"--min-replicas {low} / --max-replicas {high}: give 0 <= min <= max, max >= 1")
        options["autoscaling_config"] = {"min_replicas": low, "max_replicas": high, "initial_replicas": max(low, 1),
                                         "target_ongoing_requests": max(2, settings.max_batch)}
    else:
        if scaling.replicas < 1:
            raise LGAError(f"--replicas must be at least 1, not {scaling.replicas}")
        options["num_replicas"] = scaling.replicas
    return options


def check_port(host: str, port: int) -> None:
    """Refuse a port something else already listens on (Serve would otherwise wait for it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise LGAError(f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port or --host") from None


def deploy_failure(exc: BaseException) -> LGAError:
    """A one-line error from Serve's deploy failure (its text holds the replica's traceback)."""
    from lga_export.serve.cluster import user_error_in

    cause = user_error_in(exc)
    if cause is not None:
        return LGAError(f"a replica could not start: {cause}")
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    last = lines[-1] if lines else type(exc).__name__
    return LGAError(f"the deployment failed to start ({last[:300]}); see the Ray logs above")


def get_json(url: str, timeout: float = 5.0) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310 - our own loopback URL
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read())
        except ValueError:
            return exc.code, {}


def wait_healthy(base_url: str, timeout: float, stop: threading.Event | None = None) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline and not (stop and stop.is_set()):
        try:
            status, body = get_json(f"{base_url}/v1/health", timeout=5)
            if status == 200:
                return body
            last = body
        except (OSError, ValueError) as exc:
            last = exc
        time.sleep(0.25)
    raise LGAError(f"the server at {base_url} did not become healthy in {timeout:.0f} s (last answer: {last})")


def serve_forever(settings: ServeSettings, scaling: Scaling, host: str = "127.0.0.1", port: int = 8000,
                  address: str | None = None, num_cpus: int | None = None,
                  log: Callable[[str], None] = print) -> None:
    """Start (or join) Ray, deploy, print the URL and start-up time, serve until SIGINT/SIGTERM,
    then take the application (and a Ray instance this call started) down."""
    from lga_export.serve.cluster import one_line, ray_session

    started = time.perf_counter()
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # Serve's start-up chatter; our lines say it
    settings = resolve_settings(settings, scaling)
    options = deployment_options(settings, scaling)
    check_port(host, port)
    stop = threading.Event()
    previous: dict[int, Any] = {}
    try:
        with ray_session(address, num_cpus) as ray:
            # after ray.init: Ray's core worker installs its own SIGTERM handler, which would kill us
            previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
            serve.start(http_options={"host": host, "port": port}, logging_config={"log_level": "WARNING"})
            try:
                try:
                    serve.run(LGADeployment.options(**options).bind(dataclasses.asdict(settings)), name=APP_NAME,
                              route_prefix="/", logging_config={"log_level": "WARNING"})
                except Exception as exc:  # noqa: BLE001 - Serve wraps the replica's error
                    raise deploy_failure(exc) from None
                local = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
                base = f"http://{'[' + local + ']' if ':' in local else local}:{port}"
                wait_healthy(base, 120, stop)
                if not stop.is_set():
                    _, info = get_json(f"{base}/v1/model")
                    shown = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
                    scale = (f"{options['autoscaling_config']['min_replicas']}-"
                             f"{options['autoscaling_config']['max_replicas']} replicas (autoscaling)"
                             if "autoscaling_config" in options else f"{options['num_replicas']} replica(s)")
                    batching = (f"dynamic batching up to {settings.max_batch}, {settings.batch_wait_ms:g} ms wait"
                                if settings.max_batch > 1 else "no dynamic batching")
                    log(f"LGA server ready at {shown}/v1/segment in {time.perf_counter() - started:.1f} s: "
                        f"model {str(info.get('model'))[:12]} on {settings.backend} {settings.precision} "
                        f"({settings.device}), {scale}, {batching}")
                    log(f"endpoints: POST {shown}/v1/segment, GET {shown}/v1/health, GET {shown}/v1/model; "
                        f"Ray at {ray.get_runtime_context().gcs_address}; Ctrl-C or SIGTERM stops it")
                    stop.wait()
                log("stopping ...")
            finally:
                try:  # drains the replicas; a local Ray goes down with ray_session, a joined cluster keeps Serve
                    serve.delete(APP_NAME)
                except Exception as exc:  # noqa: BLE001 - shutting down anyway
                    log(f"warning: Serve did not shut down cleanly ({one_line(exc)})")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log("stopped")
