"""lga-bench: latency and parity of every backend against the PyTorch FP32 reference.

`run_benchmark` is the one entry point (the CLI and `lga-export demo` call it); the modules
below each do one thing: cases (which backend/precision runs and why not), int8 (ONNX Runtime
dynamic quantisation), timing, parity, compute (FLOPs and MatMul peak), machine, report, plots.
"""

from lga_export.bench.core import BenchSettings, run_benchmark

__all__ = ["BenchSettings", "run_benchmark"]
