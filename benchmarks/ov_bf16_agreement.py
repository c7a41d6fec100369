"""How far OpenVINO BF16 moves an export's masks, and whether keeping some ops FP32 helps.

    python benchmarks/ov_bf16_agreement.py --onnx runs/onnx [--samples 8] [--keep REGEX ...]

Runs the first N QaTa Val images (the built-in samples without ../shared) through the export's
graphs with OpenVINO FP32 and BF16 (batch 1, no compile cache, no self-check) and prints the
per-image mask Dice agreement and the image graph's median latency. Each `--keep REGEX` adds a
BF16 run in which the ops whose names match carry OpenVINO's `disable_fp16_compression` runtime
attribute, which the CPU plugin documents as "run this op in FP32" for reduced inference
precisions (openvino PR #21440). A `--keep .` that changes nothing means the attribute did not reach
the compiled model (measured on OpenVINO 2026.4.1: no effect, record
2026-12-02-lite-whole-encoder-noise).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KEEP_FP32 = "disable_fp16_compression_0"  # ov::DisableFP16Compression's runtime-info key


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, required=True, help="Export folder (lga-export onnx).")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--data", type=Path, default=None, help="Data root with qata-cov19/ (default: ../shared/data).")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", action="append", default=[], help="Regex of op names kept FP32 (repeatable).")
    args = parser.parse_args()

    from lga_export.errors import LGAError
    from lga_export.runtime import openvino_runner
    from lga_export.runtime.pipeline import Segmenter
    from lga_export.runtime.registry import open_runner
    from lga_export.runtime.sample_runs import run_samples
    from lga_export.samples import validation_samples
    from lga_export.verify.metrics import mask_agreement

    samples, where = validation_samples(args.samples, args.data)
    pattern: dict[str, str | None] = {"keep": None}
    check_model = openvino_runner.OpenVinoRunner._check_model

    def marking(self, graph, path, model):  # after the runner's own checks, before compile_model
        check_model(self, graph, path, model)
        if pattern["keep"] is None:
            return
        ops = model.get_ops()
        marked = [op for op in ops if re.search(pattern["keep"], op.get_friendly_name())]
        for op in marked:
            op.get_rt_info()[KEEP_FP32] = ""
        print(f"  {graph}: {len(marked)} of {len(ops)} ops marked FP32 ({pattern['keep']})", flush=True)

    openvino_runner.OpenVinoRunner._check_model = marking

    def run(precision: str, keep: str | None):
        pattern["keep"] = keep
        runner = open_runner("ov", args.onnx, precision, self_check="off", cache_dir=False, threads=args.threads)
        outputs = run_samples(runner, samples, 1)
        segmenter = Segmenter(runner)
        embedding = segmenter.text_embeddings([samples[0].text])
        times = []
        for _ in range(6):
            start = time.perf_counter()
            segmenter.image_logits([samples[0].rgb], embedding)
            times.append(time.perf_counter() - start)
        return outputs, 1000 * float(np.median(times[1:]))

    try:
        reference, ms = run("fp32", None)
    except LGAError as exc:
        print(f"usage: {exc}", file=sys.stderr)
        return 2
    print(f"{len(samples)} samples from {where}; ov fp32: image graph {ms:.1f} ms", flush=True)
    for keep in [None, *args.keep]:
        outputs, ms = run("bf16", keep)
        agree = mask_agreement(reference.logits, outputs.logits)
        print(f"ov bf16 (FP32 kept: {keep or 'none'}): image graph {ms:.1f} ms, worst {min(agree):.4f}, "
              f"mean {np.mean(agree):.4f}, per image {[round(a, 3) for a in agree]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
