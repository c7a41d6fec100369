"""`lga-export serve`: the LGA segmenter as a Ray Serve deployment behind a small HTTP API.

Endpoints (FastAPI ingress on every replica):

* ``POST /v1/segment``: multipart form, ``image`` (a PNG/JPEG/TIFF/BMP/DICOM file, read by
  `imageio.read_image` like predict) and ``text`` (its report). Answers JSON with the mask as a
  base64 PNG (0/255, the image's own size, the bytes predict writes), or the PNG itself with
  ``Accept: image/png``.
* ``GET /v1/health``: 200 while at least one replica is running, else 503, from the Serve
  controller's view of the application (`serve.status()`). Answered by a small application of
  its own (route ``/v1/health``), so a dead, stuck or saturated replica cannot hide behind it.
* ``GET /v1/model``: the model's digest, backend, precision, config and runner description.
* ``GET /``: a self-contained page (inline HTML/CSS/JS, no external asset) that calls the API.

With an API key (`auth`), ``/v1/segment`` and ``/v1/model`` need ``Authorization: Bearer <key>``
(401 and one line otherwise, checked before the body is read); ``/v1/health`` and the page stay
open. Slow clients cannot take every request slot: a body must arrive within
``body_timeout_s`` (408), and a body still arriving after `UPLOAD_GRACE_S` needs one of
``max_uploads`` upload slots (503 when none is free); ``max_ongoing_requests`` is the ready
requests' room plus ``max_uploads``. Nothing from a request is logged.

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
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs

import numpy as np

from lga_export.errors import LGAError, one_line
from lga_export.serve import IMAGE_FIELD, RAY_MISSING, TEXT_FIELD, ray_available
from lga_export.tokenization import is_blank

if not ray_available():  # the CLI checks first; importing this module needs Ray
    raise ImportError(RAY_MISSING)

from fastapi import FastAPI, Request  # noqa: E402  (fastapi comes with ray[serve])
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import HTMLResponse, JSONResponse, Response  # noqa: E402
from ray import serve  # noqa: E402
from starlette.datastructures import FormData, Headers  # noqa: E402
from starlette.exceptions import HTTPException as StarletteHTTPException  # noqa: E402
from starlette.formparsers import MultiPartException, MultiPartParser  # noqa: E402

from lga_export.serve.auth import authorized  # noqa: E402

APP_NAME = "lga"
DEPLOYMENT_NAME = "LGASegmenter"
HEALTH_APP, HEALTH_DEPLOYMENT, HEALTH_ROUTE = "lga-health", "LGAHealth", "/v1/health"
UPLOAD_GRACE_S = 1.0  # a body still arriving after this long counts as a (slow) upload
HEALTH_CHECK_PERIOD_S = 2.0  # how often Serve checks a replica: a dead one shows in /v1/health this soon
# Where Serve runs its HTTP proxies on a cluster. HeadOnly: clients reach the head's proxy only, so a
# lost worker node takes no client connection with it (benchmarks/records/2026-12-01-ray-node-loss:
# EveryNode lost the requests in flight through the dead node's proxy); EveryNode: more ingress.
PROXY_LOCATIONS = ("HeadOnly", "EveryNode")
HEAD_NODE_RESOURCE = "node:__internal_head__"  # Ray gives the head node 1 of it (any cluster, local or KubeRay)


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
    self_check: str = "refuse"  # a reduced precision's first run here: refuse, fallback (to FP32) or off
    body_timeout_s: float = 30.0  # a request body must arrive within this (408 after)
    max_uploads: int = 8  # bodies still arriving after UPLOAD_GRACE_S, per replica (503 beyond)
    api_key_sha256: str | None = None  # None: no authentication; never the key itself

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


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status, headers=headers)


# Extra headers per status: a client that timed out or was refused mid-upload gets its connection
# closed (the rest of its body is never read); 401 names the scheme; 503 says when to retry.
_STATUS_HEADERS = {408: {"Connection": "close"}, 401: {"WWW-Authenticate": 'Bearer realm="lga"'},
                   503: {"Retry-After": "5", "Connection": "close"}}


api = FastAPI(title="LGA segmentation", docs_url=None, redoc_url=None, openapi_url=None)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return error(exc.status_code, str(exc.detail))


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return error(400, f"bad request ({exc.errors()[:1]})")


@dataclass
class UploadSlots:
    """Bodies still arriving after the grace period, bounded per replica: slow clients hold at
    most `limit` of its request slots, the rest stay free for requests that are ready."""

    limit: int
    busy: int = 0

    def take(self) -> bool:
        if self.busy >= self.limit:
            return False
        self.busy += 1
        return True

    def give(self) -> None:
        self.busy -= 1


def _declared_length(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise Reject(400, "bad Content-Length header")
        if int(declared) > limit:
            raise Reject(413, f"request body of {int(declared):,} bytes is over the {limit:,}-byte limit "
                              f"(--max-request-mb); send a smaller image")


async def read_body(request: Request, limit: int, timeout_s: float, slots: UploadSlots) -> bytes:
    """The request body: 413 as soon as it is over `limit` bytes, 408 when it has not arrived
    within `timeout_s`, 503 when it is still arriving after the grace period and no upload slot
    is free. The pending receive is never cancelled by a wait, only when the read ends."""
    _declared_length(request, limit)
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = start + timeout_s
    chunks: list[bytes] = []
    size, holding = 0, False
    pending: asyncio.Future[Any] | None = None
    try:
        while True:
            now = loop.time()
            if now >= deadline:
                raise Reject(408, f"the request body did not arrive within {timeout_s:g} s (--body-timeout-s); "
                                  f"send the whole request at once")
            if not holding and now - start >= UPLOAD_GRACE_S:
                if not slots.take():
                    raise Reject(503, f"the server is already receiving {slots.limit} slow uploads "
                                      f"(--max-uploads); retry in a few seconds")
                holding = True
            if pending is None:
                pending = asyncio.ensure_future(request.receive())
            until = deadline if holding else min(deadline, start + UPLOAD_GRACE_S)
            done, _ = await asyncio.wait({pending}, timeout=max(0.0, until - now))
            if not done:
                continue
            message, pending = pending.result(), None
            if message["type"] == "http.disconnect":
                raise Reject(400, "the client closed the connection before sending the whole request")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise Reject(413, f"request body is over the {limit:,}-byte limit (--max-request-mb); "
                                  f"send a smaller image")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
    finally:
        if pending is not None:
            pending.cancel()
        if holding:
            slots.give()


class _NotText(MultiPartException):
    """A plain form field whose bytes are not text in the form's charset (UTF-8 unless declared)."""


class StrictFormParser(MultiPartParser):
    """Starlette's multipart parser, except that a plain field that does not decode is an error:
    Starlette would fall back to latin-1 and segment with a garbled report."""

    def on_part_end(self) -> None:
        part = self._current_part
        if part.file is None:
            try:
                bytes(part.data).decode(self._charset or "utf-8")
            except (UnicodeDecodeError, LookupError):
                raise _NotText(f"form field '{part.field_name[:40]}' is not {self._charset or 'utf-8'} text; "
                               f"send the report as UTF-8") from None
        super().on_part_end()


async def parse_form(headers: Headers, body: bytes, limit: int) -> FormData:
    async def stream() -> Any:
        yield body

    parser = StrictFormParser(headers, stream(), max_files=4, max_fields=8, max_part_size=limit)
    try:
        return await parser.parse()
    except _NotText as exc:
        raise Reject(400, exc.message) from None
    except MultiPartException as exc:
        raise Reject(400, f"malformed multipart form ({exc.message})") from None
    except Exception as exc:  # noqa: BLE001 - python-multipart's own errors
        raise Reject(400, f"malformed multipart form ({type(exc).__name__}: {exc})") from None


def _one(form: FormData, field: str, what: str) -> Any:
    """The single value of `field`: missing or repeated is a 400 (never the last one silently)."""
    values = form.getlist(field)
    if not values:
        raise Reject(400, f"missing form field '{field}' ({what})")
    if len(values) > 1:
        raise Reject(400, f"form field '{field}' appears {len(values)} times; send one image and one report "
                          f"per request")
    return values[0]


async def read_form(request: Request, limit: int, timeout_s: float, slots: UploadSlots) -> tuple[bytes, str, str]:
    """(image bytes, image file name, report) from the multipart form, or Reject."""
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise Reject(415, "send multipart/form-data with an image file field 'image' and the report in 'text' "
                          "(curl -F image=@xray.png -F text='...')")
    body = await read_body(request, limit, timeout_s, slots)
    form = await parse_form(request.headers, body, limit)
    try:
        image = _one(form, IMAGE_FIELD, "the image file: PNG, JPEG, TIFF or DICOM")
        text = _one(form, TEXT_FIELD, "the report of the image")
        if isinstance(image, str):
            raise Reject(400, "form field 'image' must be a file upload (curl -F image=@xray.png), not text")
        if not isinstance(text, str):
            try:
                text = (await text.read()).decode("utf-8")
            except UnicodeDecodeError:
                raise Reject(400, "form field 'text' is not UTF-8 text") from None
        if is_blank(text):  # also only NUL/zero-width/control characters: refused here, never in a batch
            raise Reject(400, "empty report: form field 'text' must hold the image's report (invisible characters "
                              "alone count as empty)")
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


def keep_uploads_out_of_logs() -> None:
    """In a replica, what a decoder finds in an upload stays out of the logs: pydicom logs and
    warns with a malformed element's value (a DICOM tag is patient data). Our own code logs no
    request content, and Serve's access lines (method, route, status) are below WARNING."""
    pydicom_log = logging.getLogger("pydicom")
    pydicom_log.setLevel(logging.CRITICAL + 1)
    pydicom_log.propagate = False
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")


@serve.deployment(name=DEPLOYMENT_NAME)
@serve.ingress(api)
class LGADeployment:
    """One replica: one active runner, one inference thread, dynamic batching in front of it."""

    def __init__(self, settings: dict[str, Any]) -> None:
        from lga_export.runtime.pipeline import Segmenter
        from lga_export.runtime.registry import open_runner, thread_options
        from lga_export.serve.codec import model_identity

        keep_uploads_out_of_logs()
        self.settings = ServeSettings(**settings)
        s = self.settings
        self.runner = open_runner(s.backend, s.model, s.precision, s.device, self_check=s.self_check,
                                  **thread_options(s.backend, s.threads))
        self.segmenter = Segmenter(self.runner)
        self.identity = model_identity(self.runner, s.model)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="lga-infer")
        self.uploads = UploadSlots(s.max_uploads)
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
    def _refused(self, request: Request) -> JSONResponse | None:
        """The 401 for a request without the server's API key (None: it may pass)."""
        reason = authorized(request.headers.get("authorization"), self.settings.api_key_sha256)
        return None if reason is None else error(401, reason, _STATUS_HEADERS[401])

    @api.get("/")
    async def page(self) -> HTMLResponse:
        from lga_export.serve.page import page_response

        return page_response()

    @api.post("/v1/segment")
    async def segment(self, request: Request) -> Response:
        from lga_export.serve.codec import decode_upload, mask_png, png_bytes

        start = time.perf_counter()
        refused = self._refused(request)
        if refused is not None:
            return refused
        s = self.settings
        try:
            data, filename, text = await read_form(request, s.max_bytes, s.body_timeout_s, self.uploads)
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
            query = parse_qs(request.scope.get("query_string", b"").decode("latin-1"))
            preview = query.get("preview", [""])[-1] in ("1", "true", "yes")
            image_png = await asyncio.to_thread(png_bytes, rgb) if preview else None
        except Reject as exc:
            return error(exc.status, exc.message, _STATUS_HEADERS.get(exc.status))
        except LGAError as exc:
            return error(400, str(exc))
        except Exception as exc:  # noqa: BLE001 - one request's failure is answered, the replica stays
            return error(500, f"internal error ({type(exc).__name__}: {one_line(str(exc))})")
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
        answer = {
            "mask_png": base64.b64encode(png).decode("ascii"), "width": width, "height": height,
            "foreground_fraction": fraction, "model": self.identity["model"], "backend": self.identity["backend"],
            "precision": self.identity["precision"], "batch_size": done.batch_size, "timings_ms": timings,
        }
        if image_png is not None:
            answer["image_png"] = base64.b64encode(image_png).decode("ascii")
        return JSONResponse(answer)

    @api.get("/v1/model")
    async def model(self, request: Request) -> Any:
        refused = self._refused(request)
        if refused is not None:
            return refused
        s = self.settings
        return {**self.identity, "threshold": s.threshold, "auth": s.api_key_sha256 is not None,
                "batching": {"max_batch": s.max_batch, "batch_wait_ms": s.batch_wait_ms if s.max_batch > 1 else None},
                "limits": {"max_request_mb": s.max_request_mb, "max_megapixels": s.max_megapixels,
                           "body_timeout_s": s.body_timeout_s, "max_uploads": s.max_uploads}}

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


def application_health(app_name: str, allow_zero: bool) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of the application as the Serve controller sees it: 200 while a
    replica is running (or none is wanted: autoscaled to zero), else 503 saying why."""
    try:
        application = serve.status().applications.get(app_name)
    except Exception as exc:  # noqa: BLE001 - no controller, no application to vouch for
        return 503, {"status": "unavailable", "reason": f"the Serve controller did not answer ({type(exc).__name__})"}
    if application is None:
        return 503, {"status": "unavailable", "reason": f"application {app_name!r} is not deployed"}
    app_status = str(getattr(application.status, "value", application.status))
    deployment = application.deployments.get(DEPLOYMENT_NAME)
    states = deployment.replica_states.items() if deployment is not None else []
    replicas = {str(getattr(k, "value", k)): v for k, v in states if v}
    body = {"application": app_status, "replicas": replicas}
    if app_status not in ("DEPLOY_FAILED", "DELETING", "NOT_STARTED"):
        if replicas.get("RUNNING", 0) > 0 or (allow_zero and app_status == "RUNNING"):
            return 200, {"status": "ok", **body}
    if app_status == "DEPLOYING":
        return 503, {"status": "starting", **body}
    return 503, {"status": "unavailable", "reason": "no replica is running", **body}


# On the head node (where the GCS, the Serve controller and, by default, the only proxy run): on a
# worker node, /v1/health went unanswered when that node was lost (2026-12-01-ray-node-loss, first run).
@serve.deployment(name=HEALTH_DEPLOYMENT, max_ongoing_requests=64,
                  ray_actor_options={"num_cpus": 0, "resources": {HEAD_NODE_RESOURCE: 0.001}})
class LGAHealth:
    """GET /v1/health, outside the model's replicas: it answers while they are dead or busy."""

    def __init__(self, app_name: str, allow_zero: bool) -> None:
        self.app_name, self.allow_zero = app_name, allow_zero
        self._cached: tuple[float, tuple[int, dict[str, Any]]] | None = None

    async def __call__(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return error(405, f"use GET {HEALTH_ROUTE}")
        now = time.monotonic()
        if self._cached is None or now - self._cached[0] > 0.5:  # a poll storm reaches the controller twice a second
            self._cached = (now, await asyncio.to_thread(application_health, self.app_name, self.allow_zero))
        status, body = self._cached[1]
        return JSONResponse(body, status_code=status, headers={"Cache-Control": "no-store"})


# --- the driver: check, deploy, announce, wait for a signal, shut down ---

def resolve_settings(settings: ServeSettings, scaling: Scaling, local: bool = True) -> ServeSettings:
    """Backend and device made explicit, the model path absolute, and the artefact verified here,
    so a wrong --model fails in one line before any replica starts."""
    from lga_export.serve.ray_cluster import check_source

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
    if not settings.body_timeout_s > 0 or settings.max_uploads < 1:
        raise LGAError(f"--body-timeout-s must be positive and --max-uploads at least 1, not "
                       f"{settings.body_timeout_s:g} and {settings.max_uploads}")
    if scaling.gpus_per_replica < 0 or scaling.cpus_per_replica <= 0:
        raise LGAError("--cpus-per-replica must be positive and --gpus-per-replica not negative")
    device = settings.device or ("cuda" if scaling.gpus_per_replica > 0 else None)
    # `local`: a reduced precision checks itself here once before the replicas start (they read the verdict)
    backend, device = check_source(settings.backend, model, settings.precision, device,
                                   self_check=settings.self_check if local else None)
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
        # room for requests that are ready, plus the bounded slow uploads (see read_body)
        "max_ongoing_requests": max(8, 2 * settings.max_batch) + settings.max_uploads,
        "max_constructor_retry_count": 2,
        "graceful_shutdown_timeout_s": 10,
        "health_check_period_s": HEALTH_CHECK_PERIOD_S,
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
    from lga_export.serve.ray_cluster import user_error_in

    cause = user_error_in(exc)
    if cause is not None:
        return LGAError(f"a replica could not start: {cause}")
    return LGAError(f"the deployment failed to start ({one_line(exc, 300, 'last')}); see the Ray logs above")


def get_json(url: str, timeout: float = 5.0, api_key: str | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        request = urllib.request.Request(url, headers=headers)
        with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310 - our own loopback URL
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


def _deploy(settings: ServeSettings, options: dict[str, Any]) -> None:
    """The health application first (it answers 503 while the model's replicas start), then the
    model's; Serve's wrapped replica error becomes one line."""
    allow_zero = options.get("autoscaling_config", {}).get("min_replicas", 1) == 0
    quiet = {"log_level": "WARNING"}  # WARNING: Serve's per-request access lines are not logged
    try:
        serve.run(LGAHealth.bind(APP_NAME, allow_zero), name=HEALTH_APP, route_prefix=HEALTH_ROUTE,
                  logging_config=quiet)
        serve.run(LGADeployment.options(**options).bind(dataclasses.asdict(settings)), name=APP_NAME,
                  route_prefix="/", logging_config=quiet)
    except Exception as exc:  # noqa: BLE001 - Serve wraps the replica's error
        raise deploy_failure(exc) from None


def _announce(settings: ServeSettings, options: dict[str, Any], host: str, port: int, info: dict[str, Any],
              seconds: float, gcs_address: str, log: Callable[[str], None]) -> None:
    shown = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    scale = (f"{options['autoscaling_config']['min_replicas']}-"
             f"{options['autoscaling_config']['max_replicas']} replicas (autoscaling)"
             if "autoscaling_config" in options else f"{options['num_replicas']} replica(s)")
    batching = (f"dynamic batching up to {settings.max_batch}, {settings.batch_wait_ms:g} ms wait"
                if settings.max_batch > 1 else "no dynamic batching")
    auth = "API key required" if settings.api_key_sha256 else "no authentication"
    log(f"LGA server ready at {shown}/v1/segment in {seconds:.1f} s: "
        f"model {str(info.get('model'))[:12]} on {settings.backend} {settings.precision} "
        f"({settings.device}), {scale}, {batching}, {auth}")
    log(f"endpoints: POST {shown}/v1/segment, GET {shown}/v1/health, GET {shown}/v1/model, page {shown}/; "
        f"Ray at {gcs_address}; Ctrl-C or SIGTERM stops it")


def serve_forever(settings: ServeSettings, scaling: Scaling, host: str = "127.0.0.1", port: int = 8000,
                  address: str | None = None, num_cpus: int | None = None,
                  log: Callable[[str], None] = print, api_key: str | None = None,
                  allow_no_auth: bool = False, proxy_location: str = "HeadOnly") -> None:
    """Start (or join) Ray, deploy, print the URL and start-up time, serve until SIGINT/SIGTERM,
    then take the application (and a Ray instance this call started) down. Listening beyond
    loopback needs `api_key` or `allow_no_auth`, checked before anything starts. `proxy_location`
    (PROXY_LOCATIONS) applies when this call starts Serve on the cluster, like host and port."""
    from lga_export.serve.auth import check_exposure, key_digest
    from lga_export.serve.ray_cluster import ray_session

    started = time.perf_counter()
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # Serve's start-up chatter; our lines say it
    check_exposure(host, api_key is not None, allow_no_auth)
    if proxy_location not in PROXY_LOCATIONS:
        raise LGAError(f"--proxy-location {proxy_location!r}: give {' or '.join(PROXY_LOCATIONS)}")
    settings = dataclasses.replace(resolve_settings(settings, scaling, local=not address),
                                   api_key_sha256=key_digest(api_key) if api_key is not None else None)
    options = deployment_options(settings, scaling)
    check_port(host, port)
    stop = threading.Event()
    previous: dict[int, Any] = {}
    try:
        with ray_session(address, num_cpus) as ray:
            # after ray.init: Ray's core worker installs its own SIGTERM handler, which would kill us
            previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
            serve.start(http_options={"host": host, "port": port}, proxy_location=proxy_location,
                        logging_config={"log_level": "WARNING"})
            try:
                _deploy(settings, options)
                local = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
                base = f"http://{'[' + local + ']' if ':' in local else local}:{port}"
                wait_healthy(base, 120, stop)
                if not stop.is_set():
                    _, info = get_json(f"{base}/v1/model", api_key=api_key)
                    _announce(settings, options, host, port, info, time.perf_counter() - started,
                              ray.get_runtime_context().gcs_address, log)
                    stop.wait()
                log("stopping ...")
            finally:
                for name in (APP_NAME, HEALTH_APP):
                    try:  # drains the replicas; a local Ray goes down with ray_session, a joined cluster keeps Serve
                        serve.delete(name)
                    except Exception as exc:  # noqa: BLE001 - shutting down anyway
                        log(f"warning: Serve did not shut down cleanly ({one_line(exc)})")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log("stopped")
