"""Compute figures: FLOPs of the image graph (counted from the model) and the machine's FP32
matrix-product peak measured with ONNX Runtime's MatMul in the same run."""

from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np


def image_graph_flops(model, batch: int = 1) -> dict[str, Any]:
    """FLOPs of one forward of the fused image graph, by torch's FlopCounterMode.

    Counted on a meta-device copy (no arithmetic, instant even for ViT-H); falls back to a real
    CPU forward when an op has no meta kernel.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from lga_export.contract import dummy_inputs, graph_specs
    from lga_export.modeling.graphs import graph_modules

    spec = graph_specs(model.config)[1]
    feeds = dummy_inputs(spec, {"batch": batch, "sequence": 16})
    errors = []
    for device in ("meta", "cpu"):
        try:
            module = graph_modules(copy.deepcopy(model).to(device).eval())[spec.name] if device == "meta" \
                else graph_modules(model.eval())[spec.name]
            args = [torch.from_numpy(feeds[name]).to(device) for name in spec.input_names]
            counter = FlopCounterMode(display=False)
            with torch.inference_mode(), counter:
                module(*args)
            return {"flops": int(counter.get_total_flops()), "batch": batch, "counted_on": device,
                    "method": "torch.utils.flop_counter.FlopCounterMode (matmul/conv/attention; 2 per MAC)"}
        except Exception as exc:  # noqa: BLE001 - record why and try the next device
            errors.append(f"{device}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    return {"flops": None, "batch": batch, "error": "; ".join(errors)}


def matmul_peak(size: int = 2048, threads: int | None = None, warmup: int = 2, iters: int = 8) -> dict[str, Any]:
    """FP32 GFLOP/s of a one-node ONNX MatMul (size x size @ size x size, 2*N^3 FLOPs) on ORT CPU."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul_peak",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [size, size]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [size, size])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [size, size])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = min(model.ir_version, 10)
    onnx.checker.check_model(model)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {"a": rng.standard_normal((size, size), dtype=np.float32),
             "b": rng.standard_normal((size, size), dtype=np.float32)}
    for _ in range(warmup):
        session.run(None, feeds)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    flops = 2.0 * size ** 3
    best, median = min(times), float(np.median(times))
    return {"size": size, "threads": threads, "iters": iters, "flops": flops,
            "best_s": best, "median_s": median, "gflops_best": flops / best / 1e9,
            "gflops_median": flops / median / 1e9, "provider": "CPUExecutionProvider"}


def torch_matmul_peak(device: str, size: int = 4096, warmup: int = 2, iters: int = 8) -> dict[str, Any]:
    """GFLOP/s of a square torch matmul on `device` per precision (fp32 with TF32 off, fp16,
    bf16): the peak GPU cases are compared with - a CPU MatMul peak is no yardstick for a GPU."""
    import torch

    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    peaks: dict[str, Any] = {}
    try:
        for name, dtype in dtypes.items():
            a = torch.randn(size, size, device=device).to(dtype)
            b = torch.randn(size, size, device=device).to(dtype)
            for _ in range(warmup):
                torch.matmul(a, b)
            times = []
            for _ in range(iters):
                sync()
                start = time.perf_counter()
                torch.matmul(a, b)
                sync()
                times.append(time.perf_counter() - start)
            peaks[name] = 2.0 * size ** 3 / min(times) / 1e9
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags
    return {"device": str(device), "size": size, "iters": iters, "gflops_best": peaks,
            "method": "torch.matmul, best of iters, TF32 off for fp32"}
