"""`lga-export serve`: the segmenter over HTTP on Ray Serve."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from lga_export.cli.common import (BackendOption, FallbackOption, ModelOption, NoSelfCheckOption, PrecisionOption,
                                   quiet_libraries, self_check_mode, user_errors)


@user_errors
def serve(
    model: Optional[Path] = ModelOption,
    backend: Optional[str] = BackendOption,
    precision: str = PrecisionOption,
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda with "
                                         "--gpus-per-replica or an engine folder, else cpu)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, "--port", help="HTTP port."),
    replicas: int = typer.Option(1, "--replicas", help="Number of replicas (each holds one runner)."),
    min_replicas: Optional[int] = typer.Option(None, "--min-replicas", help="Autoscaling lower bound "
                                               "(with --max-replicas; replaces --replicas)."),
    max_replicas: Optional[int] = typer.Option(None, "--max-replicas", help="Autoscaling upper bound."),
    max_batch: int = typer.Option(8, "--max-batch", help="Dynamic batching: most requests per batch (1: off)."),
    batch_wait_ms: float = typer.Option(10.0, "--batch-wait-ms", help="Dynamic batching: longest wait for a "
                                        "batch to fill, in milliseconds."),
    address: Optional[str] = typer.Option(None, "--address", help="Join this Ray cluster (auto, HOST:PORT or "
                                          "ray://HOST:PORT); default: start a local Ray instance."),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", help="CPUs of the local Ray instance "
                                           "(default: all); ignored with --address."),
    cpus_per_replica: float = typer.Option(1.0, "--cpus-per-replica", help="CPUs reserved per replica (backends "
                                           "that take a thread count, ONNX Runtime and OpenVINO, use this many)."),
    gpus_per_replica: float = typer.Option(0.0, "--gpus-per-replica", help="GPUs per replica for CUDA backends "
                                           "(fractions share a GPU)."),
    max_request_mb: float = typer.Option(20.0, "--max-request-mb", help="Largest request body accepted (413 above)."),
    max_megapixels: float = typer.Option(25.0, "--max-megapixels", help="Largest image accepted, in megapixels "
                                         "(checked from the header, before decoding)."),
    threshold: float = typer.Option(0.0, "--threshold", help="Logit threshold of the mask (as predict)."),
    body_timeout_s: float = typer.Option(30.0, "--body-timeout-s", help="A request body must arrive within this "
                                         "many seconds (408 after)."),
    max_uploads: int = typer.Option(8, "--max-uploads", help="Bodies still arriving after 1 s that one replica "
                                    "receives at once (503 beyond); requests that are ready keep their room."),
    api_key_file: Optional[Path] = typer.Option(None, "--api-key-file", help="File holding the API key that "
                                                "/v1/segment and /v1/model require (Authorization: Bearer <key>); "
                                                "or set LGA_API_KEY. Never given on the command line."),
    allow_no_auth: bool = typer.Option(False, "--allow-no-auth", help="Listen on a non-loopback --host without an "
                                       "API key (e.g. behind your own authenticating proxy)."),
    proxy_location: str = typer.Option("HeadOnly", "--proxy-location", help="On a cluster, where Serve's HTTP "
                                       "proxies run: HeadOnly (a lost worker node drops no client connection) or "
                                       "EveryNode (an ingress on every node; requests in flight through a lost "
                                       "node are lost). Fixed by the first serve on a cluster, like --port."),
    no_self_check: bool = NoSelfCheckOption,
    fallback_fp32: bool = FallbackOption,
) -> None:
    """Serve segmentation over HTTP (Ray Serve): POST /v1/segment, GET /v1/health, GET /v1/model.

    POST /v1/segment takes a multipart form with `image` (PNG, JPEG, TIFF or DICOM file) and `text`
    (the report) and answers JSON with the mask as a base64 PNG (or the PNG with Accept: image/png);
    masks equal `lga-export predict`'s on the same model and backend. GET / is a page for people.
    With an API key (--api-key-file or LGA_API_KEY) every endpoint but /v1/health and the page
    needs it; a non-loopback --host needs a key or --allow-no-auth. Ctrl-C or SIGTERM stops it.
    """
    quiet_libraries()
    from lga_export.errors import LGAError
    from lga_export.serve import RAY_MISSING, ray_available
    from lga_export.serve.auth import check_exposure, load_api_key

    api_key = load_api_key(api_key_file)
    check_exposure(host, api_key is not None, allow_no_auth)  # before Ray: one line, exit 2
    if not ray_available():
        raise LGAError(RAY_MISSING)
    from lga_export.serve.app import Scaling, ServeSettings, serve_forever

    if not 0 < port < 65536:
        raise LGAError(f"--port {port} is not a TCP port")
    threads = max(1, int(cpus_per_replica))  # on the CPU: the replica's share of cores
    settings = ServeSettings(model=str(model) if model is not None else None, backend=backend, precision=precision,
                             device=device, threshold=threshold, max_batch=max_batch, batch_wait_ms=batch_wait_ms,
                             max_request_mb=max_request_mb, max_megapixels=max_megapixels, threads=threads,
                             body_timeout_s=body_timeout_s, max_uploads=max_uploads,
                             self_check=self_check_mode(no_self_check, fallback_fp32))
    scaling = Scaling(replicas=replicas, min_replicas=min_replicas, max_replicas=max_replicas,
                      cpus_per_replica=cpus_per_replica, gpus_per_replica=gpus_per_replica)
    serve_forever(settings, scaling, host=host, port=port, address=address, num_cpus=num_cpus,
                  log=lambda line: typer.echo(line, err=False), api_key=api_key, allow_no_auth=allow_no_auth,
                  proxy_location=proxy_location)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
