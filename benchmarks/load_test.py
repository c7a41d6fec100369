#!/usr/bin/env python3
"""Load test of `lga-export serve` on this machine, against single-process `predict`.

    python benchmarks/load_test.py --model runs/onnx --out benchmarks/records/DATE-serve-load

For each server configuration (default: dynamic batching off, and on) it starts
`lga-export serve` on a free 127.0.0.1 port, waits until it is ready (start-up time), sends a
bounded number of requests for a bounded time at each concurrency (1, 2, 4, 8), and stops it
with SIGTERM. Every answer's mask is compared with the mask `predict` wrote for the same image.
`predict` itself runs once on the same images in this process (its throughput is the baseline).

Loopback only: the servers it starts listen on 127.0.0.1, and `--url` (test a server that is
already running instead) must resolve to a loopback address; anything else is refused.

Writes OUT/results.json, OUT/report.md and OUT/throughput.png (throughput and latency), with
the CPU model, core count and load averages, so a record on a shared machine says so.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lga_export.runtime.host import cpu_identity
from lga_export.serve.harness import ServeDidNotStart, ServeProcess

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIGS = {
    "unbatched": "--max-batch 1",
    "batched": "--max-batch 8 --batch-wait-ms 20",
}


# --- the machine ---

def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in ("ray", "onnxruntime", "numpy", "fastapi", "starlette", "uvicorn"):
        try:
            module = __import__(name)
            found[name] = getattr(module, "__version__", "?")
        except ImportError:
            pass
    try:
        found["lga_export_commit"] = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                                    capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return found


# --- inputs and the predict baseline ---

def prepare_images(args: argparse.Namespace, scratch: Path) -> tuple[Path, Path, str]:
    """(image folder, LViT text table, where they came from)."""
    if args.images is not None:
        return args.images, args.text_file, str(args.images)
    from lga_export.samples import default_data_root, validation_samples

    samples, kind = validation_samples(args.count, default_data_root())
    folder = scratch / "img"
    folder.mkdir()
    rows = []
    for sample in samples:
        name = Path(sample.name).with_suffix(".png").name
        Image.fromarray(sample.rgb).save(folder / name)
        rows.append(f'{name},"{sample.text}"\n')
    table = scratch / "text.csv"
    table.write_text("Image,Description\n" + "".join(rows))
    return folder, table, kind


def run_predict(args: argparse.Namespace, images: Path, table: Path, out: Path) -> dict[str, Any]:
    """predict_files end to end (model load included), then the same work steady-state."""
    from lga_export.imageio import read_image
    from lga_export.predict import collect_jobs, predict_files
    from lga_export.runtime.pipeline import Segmenter
    from lga_export.runtime.registry import open_runner

    load = load_average()
    start = time.perf_counter()
    predict_files(args.model, images=images, text_file=table, out=out, backend=args.backend)
    wall = time.perf_counter() - start
    jobs = collect_jobs(None, None, images, table)
    rgbs = [read_image(path) for path, _ in jobs]
    with open_runner(args.backend, args.model) as runner:
        segmenter = Segmenter(runner)
        segmenter.segment(rgbs[:1], [jobs[0][1]])  # warm-up
        start = time.perf_counter()
        for first in range(0, len(jobs), 4):  # predict's batch size
            segmenter.segment(rgbs[first:first + 4], [t for _, t in jobs[first:first + 4]])
        steady = time.perf_counter() - start
    return {"images": len(jobs), "wall_s": round(wall, 3), "throughput_end_to_end": round(len(jobs) / wall, 3),
            "steady_s": round(steady, 3), "throughput_steady": round(len(jobs) / steady, 3), "batch_size": 4,
            "load_average_before": load, "load_average_after": load_average()}


# --- the server ---

def start_server(args: argparse.Namespace, options: str, log: Path) -> ServeProcess:
    """`lga-export serve` on a free 127.0.0.1 port with this run's model, backend and CPUs, and
    `options` (one configuration's serve options)."""
    command = ["--cpus-per-replica", str(args.cpus_per_replica)]
    if args.model is not None:
        command += ["--model", str(args.model)]
    if args.backend:
        command += ["--backend", args.backend]
    if args.num_cpus:
        command += ["--num-cpus", str(args.num_cpus)]
    return ServeProcess(command + shlex.split(options), key=os.environ.get("LGA_API_KEY"), log=log)


def stop_server(server: ServeProcess | None) -> dict[str, Any]:
    """Its exit code and how long SIGTERM took to end it."""
    if server is None:
        return {"exit_code": None, "shutdown_s": None}
    start = time.perf_counter()
    code = server.stop(120)
    return {"exit_code": code, "shutdown_s": round(time.perf_counter() - start, 2)}


# --- load ---

@dataclass
class Level:
    concurrency: int
    latencies_ms: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    identical: int = 0
    agreement: list[float] = field(default_factory=list)
    wall_s: float = 0.0


def run_level(url: str, concurrency: int, requests: int, duration: float,
              inputs: list[tuple[str, bytes, str, np.ndarray, bytes]]) -> Level:
    """`concurrency` clients send until `requests` are sent or `duration` seconds have passed."""
    from lga_export.serve.client import Client

    level = Level(concurrency)
    lock = threading.Lock()
    sent = [0]
    deadline = time.perf_counter() + duration

    def worker() -> None:
        client = Client(url, timeout=300, api_key=os.environ.get("LGA_API_KEY"))  # the server's, if it has one
        while True:
            with lock:
                if sent[0] >= requests or time.perf_counter() >= deadline:
                    return
                index = sent[0]
                sent[0] += 1
            name, data, report, expected, expected_png = inputs[index % len(inputs)]
            start = time.perf_counter()
            try:
                answer = client.segment(data, name, report)
                elapsed = (time.perf_counter() - start) * 1000
            except OSError as exc:
                with lock:
                    level.errors[type(exc).__name__] = level.errors.get(type(exc).__name__, 0) + 1
                client.close()
                continue
            if answer.status != 200:
                with lock:
                    level.errors[str(answer.status)] = level.errors.get(str(answer.status), 0) + 1
                continue
            body = answer.json()
            png = base64.b64decode(body["mask_png"])
            mask = np.asarray(Image.open(io.BytesIO(png)))
            with lock:
                level.latencies_ms.append(elapsed)
                level.batch_sizes.append(int(body.get("batch_size", 1)))
                level.identical += int(png == expected_png)
                level.agreement.append(float((mask == expected).mean()) if mask.shape == expected.shape else 0.0)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    level.wall_s = time.perf_counter() - start
    return level


def summarise(level: Level) -> dict[str, Any]:
    ok = len(level.latencies_ms)
    lat = np.array(level.latencies_ms) if ok else np.array([np.nan])
    return {
        "concurrency": level.concurrency, "ok": ok, "errors": level.errors, "wall_s": round(level.wall_s, 3),
        "throughput": round(ok / level.wall_s, 3) if level.wall_s else 0.0,
        "p50_ms": round(float(np.percentile(lat, 50)), 1), "p90_ms": round(float(np.percentile(lat, 90)), 1),
        "p99_ms": round(float(np.percentile(lat, 99)), 1), "mean_ms": round(float(lat.mean()), 1),
        "mean_batch": round(float(np.mean(level.batch_sizes)), 2) if ok else None,
        "max_batch_seen": max(level.batch_sizes) if ok else None,
        "masks_identical": level.identical, "min_pixel_agreement": round(min(level.agreement), 6) if ok else None,
    }


# --- report ---

def render(record: dict[str, Any]) -> str:
    env, base = record["environment"], record["predict"]
    lines = [f"# lga-export serve load test ({record['date']})", "",
             f"Machine: {env['cpu_model']}, {env['logical_cores']} logical cores; load average at start "
             f"{env['load_average_start']}, at end {env['load_average_end']}.",
             f"Model: {record['model']} (digest {str(record.get('model_digest'))[:12]}) on {record['backend']} "
             f"{record.get('precision', '')}; {base['images']} images from {record['images']}; "
             f"each level: at most {record['limits']['requests']} requests or {record['limits']['duration_s']} s.",
             f"Versions: {', '.join(f'{k} {v}' for k, v in env['versions'].items())}.", ""]
    if env["load_average_start"] and env["load_average_start"][0] > 0.5 * env["logical_cores"]:
        lines += [f"> **The CPU was shared with other work** (1-minute load average {env['load_average_start'][0]} "
                  f"on {env['logical_cores']} cores at the start): absolute figures include contention; compare "
                  f"ratios within this run.", ""]
    lines += ["## Baseline: single-process predict", "",
              "Run in this process before and after the servers; the mean is what the ratios use.", "",
              f"- end to end (`predict_files`, model load and file I/O included): {base['throughput_end_to_end']} "
              f"images/s ({' and '.join(str(r['throughput_end_to_end']) for r in base.get('runs', []))})",
              f"- steady state (model loaded, batches of {base['batch_size']}): {base['throughput_steady']} images/s "
              f"({' and '.join(str(r['throughput_steady']) for r in base.get('runs', []))})",
              "", "## Server", "",
              "| config | serve options | start-up s | shutdown | concurrency | ok | errors | images/s | vs predict "
              "(steady) | p50 ms | p90 ms | p99 ms | mean batch | masks identical | min pixel agreement |",
              "| --- | --- | ---: | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for config in record["configs"]:
        stop = config["shutdown"]
        for level in config["levels"]:
            errors = ", ".join(f"{k}: {v}" for k, v in level["errors"].items()) or "0"
            ratio = level["throughput"] / base["throughput_steady"] if base["throughput_steady"] else float("nan")
            lines.append(f"| {config['name']} | `{config['options']}` | {config['startup_s']} | exit {stop['exit_code']} "
                         f"in {stop['shutdown_s']} s | {level['concurrency']} | {level['ok']} | {errors} | "
                         f"{level['throughput']} | {ratio:.2f}x | {level['p50_ms']} | {level['p90_ms']} | "
                         f"{level['p99_ms']} | {level['mean_batch']} | {level['masks_identical']}/{level['ok']} | "
                         f"{level['min_pixel_agreement']} |")
    lines += ["", "## Headline", ""]
    for config in record["configs"]:
        top = max(config["levels"], key=lambda level: level["concurrency"])
        lines.append(f"- **{config['name']}** at concurrency {top['concurrency']}: {top['throughput']} images/s = "
                     f"{top['throughput'] / base['throughput_steady']:.2f}x single-process predict (steady state), "
                     f"p50 {top['p50_ms']} ms, p99 {top['p99_ms']} ms, mean batch {top['mean_batch']}; ready in "
                     f"{config['startup_s']} s after launch.")
    lines += ["", "Masks identical: the served PNG equals the bytes `predict` wrote for that image. Dynamic "
              "batching puts images in batches predict did not form, which may move a boundary pixel at the "
              "1e-6 logit level; the minimum pixel agreement shows how far that goes.", ""]
    return "\n".join(lines)


def plot(record: dict[str, Any], out: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for index, config in enumerate(record["configs"]):
        colour = f"C{index}"  # one colour per configuration in both panels
        x = [level["concurrency"] for level in config["levels"]]
        left.plot(x, [level["throughput"] for level in config["levels"]], marker="o", color=colour,
                  label=config["name"])
        right.plot(x, [level["p50_ms"] for level in config["levels"]], marker="o", color=colour,
                   label=f"{config['name']} p50")
        right.plot(x, [level["p99_ms"] for level in config["levels"]], marker="x", linestyle="--", color=colour,
                   label=f"{config['name']} p99")
    left.axhline(record["predict"]["throughput_steady"], color="gray", linestyle=":", label="predict (steady)")
    left.axhline(record["predict"]["throughput_end_to_end"], color="silver", linestyle="-.",
                 label="predict (end to end)")
    left.set(xlabel="concurrent clients", ylabel="images / s", title="throughput", xscale="log", ylim=(0, None))
    right.set(xlabel="concurrent clients", ylabel="latency ms", title="latency", xscale="log", ylim=(0, None))
    for axis in (left, right):
        axis.set_xticks([level["concurrency"] for level in record["configs"][0]["levels"]])
        axis.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        axis.get_xaxis().set_minor_formatter(matplotlib.ticker.NullFormatter())
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    env = record["environment"]
    figure.suptitle(f"lga-export serve, {record['backend']}, {env['cpu_model']} x{env['logical_cores']} "
                    f"(load avg {env['load_average_start'][0] if env['load_average_start'] else '?'})", fontsize=10)
    figure.tight_layout()
    figure.savefig(out / "throughput.png", dpi=110)
    plt.close(figure)
    return ["throughput.png"]


def parse_args() -> argparse.Namespace:
    """The options, with the bounds a load test must keep (requests, duration, concurrency)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="export folder / engine folder / checkpoint (default: embedded)")
    parser.add_argument("--backend", help="runner (default: the one that fits --model)")
    parser.add_argument("--images", type=Path, help="image folder (with --text-file); default: validation samples")
    parser.add_argument("--text-file", type=Path)
    parser.add_argument("--count", type=int, default=16, help="validation samples to use without --images")
    parser.add_argument("--out", type=Path, required=True, help="record folder (results.json, report.md, plots)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--requests", type=int, default=48, help="most requests per concurrency level")
    parser.add_argument("--duration", type=float, default=40.0, help="most seconds per concurrency level")
    parser.add_argument("--config", action="append", metavar="NAME=OPTIONS",
                        help="a server configuration (serve options); default: unbatched and batched")
    parser.add_argument("--cpus-per-replica", type=float, default=float(os.cpu_count() or 1))
    parser.add_argument("--num-cpus", type=int, help="CPUs of the server's local Ray instance")
    parser.add_argument("--url", help="test this already running loopback server instead of starting servers")
    parser.add_argument("--replot", action="store_true", help="only re-render OUT/report.md and the plot from "
                        "OUT/results.json")
    args = parser.parse_args()
    if args.replot:
        return args
    if args.images is not None and args.text_file is None:
        parser.error("--images needs --text-file")
    if args.requests < 1 or args.requests > 10_000 or args.duration <= 0 or args.duration > 600:
        parser.error("--requests must be 1..10000 and --duration 0..600 s (the test is bounded)")
    if max(args.concurrency) > 64 or min(args.concurrency) < 1:
        parser.error("--concurrency levels must be 1..64")
    from lga_export.errors import LGAError
    from lga_export.serve.client import require_loopback

    try:
        if args.url:
            require_loopback(args.url)
    except LGAError as exc:
        parser.error(str(exc))
    return args


def new_record(args: argparse.Namespace) -> dict[str, Any]:
    """The record's header: when, what, the limits and the machine at the start."""
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "model": str(args.model or "embedded default"),
        "backend": args.backend or "default for the model",
        "limits": {"requests": args.requests, "duration_s": args.duration, "concurrency": args.concurrency},
        "environment": {"cpu_model": cpu_identity()[0], "logical_cores": os.cpu_count(), "load_average_start": load_average(),
                        "platform": platform.platform(), "versions": versions()},
        "command": " ".join(shlex.quote(a) for a in sys.argv),
    }


def load_inputs(images: Path, table: Path, predicted: Path) -> list[tuple[str, bytes, str, np.ndarray, bytes]]:
    """(name, upload bytes, report, predict's mask, predict's PNG bytes) per image: what each
    request sends and what its answer must equal."""
    from lga_export.predict import collect_jobs

    inputs = []
    for path, report in collect_jobs(None, None, images, table):
        expected_png = (predicted / f"{path.stem}_mask.png").read_bytes()
        inputs.append((path.name, path.read_bytes(), report, np.asarray(Image.open(io.BytesIO(expected_png))),
                       expected_png))
    return inputs


def run_config(args: argparse.Namespace, name: str, options: str, inputs: list,
               record: dict[str, Any]) -> dict[str, Any]:
    """One server configuration: start it (unless --url), warm it up, run every concurrency level, stop it."""
    from lga_export.serve.client import Client

    server = None
    if args.url:
        url, startup = args.url, None
    else:
        print(f"[{name}] starting lga-export serve {options} ...", flush=True)
        server = start_server(args, options, args.out / f"server-{name}.log")
        try:
            startup = round(server.wait_ready(300), 2)
        except ServeDidNotStart as exc:
            raise SystemExit(str(exc)) from None
        url = server.url
        print(f"  {server.ready_line} (launch to ready {startup} s)", flush=True)
    served = Client(url, api_key=os.environ.get("LGA_API_KEY")).get("/v1/model").json()
    record.update(backend=served["backend"], precision=served["precision"], model_digest=served["model"])
    result: dict[str, Any] = {"name": name, "options": options, "startup_s": startup,
                              "ready_line": server.ready_line if server else None,
                              "command": server.command if server else None, "levels": []}
    try:
        run_level(url, 2, 2, 60, inputs)  # warm-up: first requests pay one-time costs
        for concurrency in args.concurrency:
            before = load_average()
            level = summarise(run_level(url, concurrency, args.requests, args.duration, inputs))
            level.update(load_average_before=before, load_average_after=load_average())
            result["levels"].append(level)
            print(f"  c={concurrency}: {level['ok']} ok, {level['throughput']} img/s, p50 {level['p50_ms']} ms, "
                  f"p99 {level['p99_ms']} ms, batch {level['mean_batch']}, errors {level['errors']}, "
                  f"identical {level['masks_identical']}/{level['ok']}", flush=True)
    finally:
        result["shutdown"] = stop_server(server)
    return result


def main() -> int:
    args = parse_args()
    if args.replot:
        write(json.loads((args.out / "results.json").read_text()), args.out)
        return 0
    configs = dict(item.split("=", 1) for item in args.config) if args.config else dict(DEFAULT_CONFIGS)
    if args.url:
        configs = {"running server": "(started elsewhere)"}
    args.out.mkdir(parents=True, exist_ok=True)
    record = new_record(args)
    with tempfile.TemporaryDirectory(prefix="lga-load-") as scratch_name:
        scratch = Path(scratch_name)
        images, table, record["images"] = prepare_images(args, scratch)
        print(f"predict baseline on {images} ...", flush=True)
        first = run_predict(args, images, table, scratch / "predict")
        print(f"  {first}", flush=True)
        inputs = load_inputs(images, table, scratch / "predict")
        record["configs"] = [run_config(args, name, options, inputs, record) for name, options in configs.items()]
        print("predict baseline again (the machine's load drifts) ...", flush=True)
        last = run_predict(args, images, table, scratch / "predict-again")
        print(f"  {last}", flush=True)
    record["predict"] = baseline(first, last)
    record["environment"]["load_average_end"] = load_average()
    write(record, args.out)
    return 0


def baseline(first: dict[str, Any], last: dict[str, Any]) -> dict[str, Any]:
    """The mean of predict's two runs (before and after the servers) is the figure ratios use."""
    return {"images": first["images"], "batch_size": first["batch_size"],
            "throughput_end_to_end": round((first["throughput_end_to_end"] + last["throughput_end_to_end"]) / 2, 3),
            "throughput_steady": round((first["throughput_steady"] + last["throughput_steady"]) / 2, 3),
            "wall_s": first["wall_s"], "runs": [first, last]}


def write(record: dict[str, Any], out: Path) -> None:
    (out / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "report.md").write_text(render(record))
    plots = plot(record, out)
    print(f"wrote {out}/results.json, report.md{', ' + ', '.join(plots) if plots else ''}")


if __name__ == "__main__":
    sys.exit(main())
