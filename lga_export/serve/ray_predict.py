"""`lga-export predict --ray`: predict's job as Ray Data `map_batches` over a pool of runner actors.

The driver does what `predict` does before the first inference (collect and check the jobs and
output names, read every image with `read_image`), then cuts the jobs into predict's own chunks
of `batch_size` (same order, same composition, so every backend sees the very batches plain
predict runs and the masks are identical). Each chunk is one row of the dataset (its images
travel with it, so a cluster needs no shared file system); each actor opens one runner with the factory
and segments with the pipeline, and sends back the mask and overlay PNG bytes, which the driver
writes into predict's staging folder: all outputs are published together, or none.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from lga_export.errors import LGAError, ValidationFailed


class ChunkSegmenter:
    """A Ray Data actor: one runner from the factory; one row in = one predict chunk."""

    def __init__(self, backend: str, source: str | None, precision: str, device: str, threshold: float,
                 options: dict[str, Any], self_check: str = "refuse") -> None:
        from lga_export.runtime.pipeline import Segmenter
        from lga_export.runtime.registry import open_runner

        self.runner = open_runner(backend, source, precision, device, self_check=self_check, **options)
        self.segmenter = Segmenter(self.runner)
        self.threshold = threshold

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from lga_export.predict import overlay
        from lga_export.serve.codec import mask_png, png_bytes

        rows: dict[str, list[Any]] = {"index": [], "mask_png": [], "overlay_png": [], "finite": []}
        for payload in batch["chunk"]:
            indices, rgbs, texts = pickle.loads(payload)
            for index, rgb, result in zip(indices, rgbs, self.segmenter.segment(rgbs, texts, self.threshold)):
                rows["index"].append(index)
                rows["mask_png"].append(mask_png(result.mask))
                rows["overlay_png"].append(png_bytes(overlay(rgb, result.mask)))
                rows["finite"].append(bool(np.isfinite(result.logits).all()))
        return {"index": np.array(rows["index"], dtype=np.int64), "finite": np.array(rows["finite"], dtype=bool),
                "mask_png": np.array(rows["mask_png"], dtype=object),
                "overlay_png": np.array(rows["overlay_png"], dtype=object)}


def _source(model_ref: Path | None) -> str | None:
    """An absolute path (actors may run elsewhere) or None for the embedded model."""
    if model_ref is None:
        return None
    path = Path(model_ref).expanduser()
    if not path.exists():
        raise LGAError(f"{path}: no such export folder, engine folder or checkpoint")
    return str(path.resolve())


def predict_files_ray(model_ref: Path | None, *, image: Path | None = None, text: str | None = None,
                      images: Path | None = None, text_file: Path | None = None,
                      out: Path = Path("runs/predict"), threshold: float = 0.0, force: bool = False,
                      batch_size: int = 4, backend: str | None = None, precision: str = "fp32",
                      device: str | None = None, progress: bool = False, workers: int = 2, address: str | None = None,
                      num_cpus: int | None = None, self_check: str = "refuse") -> list[Path]:
    """`predict_files` on Ray Data: same checks, same files, same masks, all or nothing.

    `workers` runner actors (each reserving an equal share of the cluster's CPUs, or one GPU per
    actor with a CUDA device); `address` joins a Ray cluster, default a local Ray instance.
    """
    from lga_export.fileio import atomic_files
    from lga_export.imageio import read_image
    from lga_export.predict import check_out, collect_jobs, output_names
    from lga_export.serve.ray_cluster import check_source, import_ray, ray_session

    if batch_size < 1:
        raise LGAError(f"--batch-size must be at least 1, not {batch_size}")
    if workers < 1:
        raise LGAError(f"--workers must be at least 1, not {workers}")
    import_ray()  # before any work: one line when the serve extra is missing
    check_out(out, images)
    jobs = collect_jobs(image, text, images, text_file)
    source = _source(model_ref)
    # A reduced precision checks itself once on this machine before the actors start (they then read the
    # verdict); on a cluster each actor's machine checks itself when its runner opens.
    backend, device = check_source(backend, source, precision, device, self_check=self_check if not address else None)
    names = [name for path, _ in jobs for name in output_names(path)]
    actor = {"backend": backend, "source": source, "precision": precision, "device": device,
             "threshold": threshold, "self_check": self_check}
    with atomic_files(out, names, force=force) as staged:
        rgbs = [read_image(path) for path, _ in jobs]  # every image readable before any inference
        with ray_session(address, num_cpus) as ray:
            dataset = _chunk_dataset(ray, jobs, rgbs, batch_size, workers, actor)
            done = _write_outputs(dataset, jobs, staged, progress)
            if done != len(jobs):
                raise LGAError(f"the Ray job returned {done} of {len(jobs)} images; nothing was written")
    return [out / name for name in names]


def _chunk_dataset(ray, jobs: list, rgbs: list[np.ndarray], batch_size: int, workers: int, actor: dict[str, Any]):
    """Predict's chunks of `batch_size` as the rows of a Ray dataset (each carries its images, so no
    shared file system is needed), mapped by a pool of `workers` ChunkSegmenter actors given the
    `actor` options (backend, source, precision, device, threshold, self_check) and an equal share of
    the cluster's CPUs, or one GPU each on a CUDA device."""
    import ray.data

    from lga_export.runtime.registry import thread_options

    gpu = str(actor["device"]).startswith("cuda")
    cpus = 1.0 if gpu else max(1.0, float(int(ray.cluster_resources().get("CPU", 1) // workers)))
    options = {} if gpu else thread_options(actor["backend"], int(cpus))  # the actor's share of the CPUs
    chunks = [list(range(start, min(start + batch_size, len(jobs)))) for start in range(0, len(jobs), batch_size)]
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # ours counts images below
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # execution-plan chatter
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled"
    rows = [{"chunk": pickle.dumps((chunk, [rgbs[i] for i in chunk], [jobs[i][1] for i in chunk]), protocol=5)}
            for chunk in chunks]  # the chunk travels in the dataset: no shared file system needed
    dataset = ray.data.from_items(rows, override_num_blocks=len(chunks))
    return dataset.map_batches(
        ChunkSegmenter, batch_size=1, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=min(workers, len(chunks))),
        num_cpus=cpus, num_gpus=1 if gpu else 0,
        fn_constructor_kwargs={"backend": actor["backend"], "source": actor["source"],
                               "precision": actor["precision"], "device": actor["device"],
                               "threshold": actor["threshold"], "options": options,
                               "self_check": actor["self_check"]})


def _write_outputs(dataset, jobs: list, staged: dict[str, Path], progress: bool) -> int:
    """Write each returned mask and overlay PNG into its staged file; returns how many images came
    back. NaN/Inf logits fail the run; an error raised in an actor is re-raised as the user's own."""
    from tqdm import tqdm

    from lga_export.predict import output_names
    from lga_export.serve.ray_cluster import one_line, user_error_in

    done: set[int] = set()
    try:
        with tqdm(total=len(jobs), desc="predict (ray)", unit="image", disable=not progress) as bar:
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                bad = [jobs[i][0].name for i, ok in zip(batch["index"], batch["finite"]) if not ok]
                if bad:
                    raise ValidationFailed(f"the model produced NaN/Inf logits for {bad[:3]}; nothing was "
                                           f"written - check the checkpoint's weights (re-export or retrain it)")
                for index, mask, picture in zip(batch["index"], batch["mask_png"], batch["overlay_png"]):
                    mask_name, overlay_name = output_names(jobs[int(index)][0])
                    staged[mask_name].write_bytes(bytes(mask))
                    staged[overlay_name].write_bytes(bytes(picture))
                    done.add(int(index))
                bar.update(len(batch["index"]))
    except LGAError:
        raise
    except Exception as exc:  # noqa: BLE001 - Ray wraps what failed remotely
        cause = user_error_in(exc)
        if cause is not None:
            raise type(cause)(str(cause)) from None
        raise LGAError(f"the Ray job failed ({one_line(exc)})") from None
    return len(done)
