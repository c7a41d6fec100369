"""Serving and batch prediction on Ray: thin shells over the runner factory and the pipeline.

* `app`: the Ray Serve deployment behind `lga-export serve` (POST /v1/segment, GET /v1/health,
  GET /v1/model) and the driver that starts, announces and stops it.
* `batch`: `lga-export predict --ray`, Ray Data `map_batches` over a pool of runner actors that
  writes the same files as `predict`, all or nothing.
* `codec`: what both share with the runtime core: upload bytes -> `imageio.read_image`, mask ->
  PNG bytes (the bytes `predict` writes), and the model's identity (digest, config).
* `client`: a stdlib HTTP client for the tests and the load test (loopback only by default).
* `harness`: `lga-export serve` in a subprocess (free port, ready line, SIGTERM, its output) for the
  tests and the benchmarks that drive a real server.

Nothing here opens a model file or builds a feed: runners come from
`lga_export.runtime.registry.open_runner` and masks from `lga_export.runtime.pipeline.Segmenter`.
Importing this package imports neither ray nor torch; `ray_available()` says whether Ray is there.
"""

from __future__ import annotations


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
        import ray.serve  # noqa: F401
    except ImportError:
        return False
    return True


# The multipart form fields of POST /v1/segment (the HTTP API, not graph tensors).
IMAGE_FIELD, TEXT_FIELD = "image", "text"
RAY_MISSING = 'this command needs ray, which this install lacks; pip install "lga-export[serve]"'
