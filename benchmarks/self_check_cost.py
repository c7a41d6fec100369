"""What the self-check of a reduced precision costs (issue #20 item 2), first run and cached.

For each backend/precision, REPEATS times in a fresh cache folder (LGA_EXPORT_CACHE): open the
runner through the factory with the check (the first run on this machine: the reduced graphs are
compiled, the FP32 reference opened and compiled, the check sample run through both, the verdict
stored), then open it again (the verdict is read), and, in another fresh cache folder, open it with
--no-self-check (what the first open costs without the check). Prints a markdown table and writes
JSON with every figure.

    python benchmarks/self_check_cost.py [--onnx EXPORT] [--ov-int8 EXPORT] [--repeats 3] [--out FILE]

Without --onnx the embedded default model is exported (FP32, FP16, ONNX Runtime INT8 dynamic)
into a temporary folder; --ov-int8 adds OpenVINO INT8 from an `lga-export onnx --int8 ov` export.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _open(backend: str, folder: Path, precision: str, mode: str, threads: int | None) -> tuple[float, dict]:
    from lga_export.runtime.registry import open_runner

    start = time.perf_counter()
    runner = open_runner(backend, folder, precision, self_check=mode, **({"threads": threads} if threads else {}))
    seconds = time.perf_counter() - start
    check = runner.self_check.to_dict() if runner.self_check is not None else {}
    runner.deactivate()
    return seconds, check


def _openvino_version() -> str | None:
    try:
        import openvino

        return openvino.get_version().split("-")[0]
    except ImportError:
        return None


def measure(backend: str, folder: Path, precision: str, repeats: int, threads: int | None) -> dict:
    rows = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="lga-selfcheck-") as root:
            os.environ["LGA_EXPORT_CACHE"] = str(Path(root) / "checked")
            first, check = _open(backend, folder, precision, "record", threads)  # a failing verdict is measured too
            again, cached = _open(backend, folder, precision, "record", threads)
            os.environ["LGA_EXPORT_CACHE"] = str(Path(root) / "unchecked")
            plain, _ = _open(backend, folder, precision, "off", threads)
        rows.append({"open_first_s": first, "check_s": check.get("check_seconds"), "open_cached_s": again,
                     "cached_lookup_s": cached.get("seconds"), "cached": cached.get("cached"),
                     "open_without_check_s": plain, "state": check.get("state"), "figure": check.get("figure"),
                     "host": check.get("host")})
    median = {k: statistics.median(r[k] for r in rows) for k in ("open_first_s", "check_s", "open_cached_s",
                                                                  "cached_lookup_s", "open_without_check_s")}
    return {"backend": backend, "precision": precision, "runs": rows, "median": median}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--onnx", type=Path, help="export folder with FP16 graphs (and ONNX Runtime INT8 ones, measured when present)")
    parser.add_argument("--ov-int8", type=Path, help="export folder of lga-export onnx --int8 ov")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="JSON file for every figure")
    args = parser.parse_args()

    from lga_export.artifact import open_export
    from lga_export.runtime.base import ONNX
    from lga_export.runtime.host import cpu_identity
    from lga_export.versions import library_versions

    with tempfile.TemporaryDirectory(prefix="lga-selfcheck-export-") as tmp:
        folder = args.onnx
        if folder is None:
            from lga_export.export.exporter import export_onnx
            from lga_export.loading import load_model

            folder = Path(tmp) / "onnx"
            export_onnx(load_model(), folder, fp16=True, int8="dynamic", validate=False, log=lambda _: None)
        cases = [("ov", folder, "bf16"), ("ort", folder, "fp16")]
        if open_export(folder).int8_format == ONNX:  # an `--int8 ov` export's INT8 graph is OpenVINO's
            cases.append(("ort", folder, "int8"))
        if args.ov_int8:
            cases.append(("ov", args.ov_int8, "int8"))
        results = [measure(b, f, p, args.repeats, args.threads) for b, f, p in cases]
    model, flags = cpu_identity()
    record = {"cpu": model, "cpu_flags": flags, "load_average": list(os.getloadavg()), "repeats": args.repeats,
              "libraries": {"onnxruntime": library_versions().get("onnxruntime"), "openvino": _openvino_version()},
              "results": results}
    print(f"{model}; load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}; median of {args.repeats}")
    print("| case | verdict | first open with check s | check's share s | first open without check s | "
          "cached open s | cached lookup ms |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        m = r["median"]
        print(f"| {r['backend']}-{r['precision']} | {r['runs'][0]['state']} | {m['open_first_s']:.2f} | "
              f"{m['check_s']:.2f} | {m['open_without_check_s']:.2f} | {m['open_cached_s']:.2f} | "
              f"{m['cached_lookup_s'] * 1000:.1f} |")
    if args.out:
        args.out.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
