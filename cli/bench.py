"""`lga-bench`: latency and Dice parity of every backend against the PyTorch reference."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from lga_export.cli.common import (CheckpointOption, DebugOption, PresetOption, SamCheckpointOption, TextModelOption,
                                   ablation_overrides, quiet_libraries, set_debug, user_errors)

app = typer.Typer(help="Latency and Dice parity of every backend against the PyTorch FP32 reference.",
                  add_completion=False, pretty_exceptions_enable=False)


def _ints(text: str, option: str) -> list[int]:
    from lga_export.errors import LGAError

    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise LGAError(f"{option} takes comma-separated integers, not {text!r}") from None


@app.command()
@user_errors
def bench(
    preset: Optional[str] = PresetOption,
    checkpoint: Optional[Path] = CheckpointOption,
    sam_checkpoint: Optional[Path] = SamCheckpointOption,
    text_model: Optional[str] = TextModelOption,
    onnx: Optional[Path] = typer.Option(None, "--onnx", help="Existing export folder (default: export into OUT/onnx)."),
    engines: Optional[Path] = typer.Option(None, "--engines", help="TensorRT engine folder from lga-export trt."),
    backends: str = typer.Option("torch,torch-compile,ort,ov,trt", "--backends", help="Comma list of torch, "
                                 "torch-compile, ort, ov (OpenVINO, CPU: fp32, bf16), trt. PyTorch FP32 eager always "
                                 "runs as the reference."),
    precision: str = typer.Option("fp32,fp16,bf16,int8", "--precision", help="Comma list of fp32, fp16, bf16, int8; "
                                  "pairs a backend cannot run are listed as skipped with the reason."),
    batch: str = typer.Option("1,2", "--batch", help="Comma list of batch sizes."),
    data: Optional[Path] = typer.Option(None, "--data", help="Data root with qata-cov19/ (LViT layout; default "
                                        "../shared/data when present, else built-in samples)."),
    samples: int = typer.Option(8, "--samples", help="Validation images used for parity."),
    warmup: int = typer.Option(2, "--warmup", help="Untimed iterations before each measurement."),
    iters: int = typer.Option(10, "--iters", help="Timed iterations per measurement."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch, ONNX Runtime and "
                                          "OpenVINO (default: torch's current setting)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda or cuda:N for PyTorch, ONNX Runtime "
                                         "and TensorRT (default: cuda when torch sees a GPU, else cpu)."),
    ort_providers: Optional[str] = typer.Option(None, "--ort-providers", help="Comma list of ONNX Runtime providers "
                                                "(default: CUDA when present, then CPU)."),
    exclude: Optional[str] = typer.Option(None, "--exclude", help="Comma list of backend-precision pairs not to "
                                          "run, e.g. torch-fp16 (listed as skipped)."),
    matmul_size: int = typer.Option(2048, "--matmul-size", help="Side of the square MatMul that measures the FP32 peak."),
    out: Path = typer.Option(Path("runs/bench"), "--out", "-o", help="Output folder (written atomically)."),
    min_dice_agreement: Optional[float] = typer.Option(None, "--min-dice-agreement", help="Gate: worst per-sample "
                                                       "mask Dice vs the reference, every backend (exit 3 below). "
                                                       "Default: the spec's per precision (fp32 0.999, fp16/bf16 0.99, "
                                                       "int8 0.98)."),
    require_all: bool = typer.Option(False, "--require-all", help="Gate: every requested backend/precision must "
                                     "run; a skipped one fails with exit 3 (GPU CI)."),
    max_latency_ratio: Optional[float] = typer.Option(None, "--max-latency-ratio", help="Gate: image-graph p50 "
                                                      "latency / PyTorch FP32's, every other backend (exit 3 above)."),
    no_self_check: bool = typer.Option(False, "--no-self-check", help="Skip the self-check of reduced precisions "
                                       "(each one's first run on this machine against the FP32 graphs of its "
                                       "backend, cached). With it on (the default) the check is recorded per case "
                                       "in results.json and the report, and a failed check fails the gate (exit 3)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output folder."),
    debug: bool = DebugOption,
) -> None:
    """Benchmark every backend and precision; writes results.json, report.md and PNG plots.

    Exit 3 when a gate fails (the report is still written), or when no backend was compared; 2 on a
    user error, including an --onnx or --engines folder of another model than the one benchmarked.
    """
    set_debug(debug)
    quiet_libraries()
    from lga_export.bench import BenchSettings, run_benchmark
    from lga_export.loading import load_model

    settings = BenchSettings(backends=backends, precisions=precision, batches=_ints(batch, "--batch"),
                             samples=samples, warmup=warmup, iters=iters, threads=threads, data_root=data,
                             engines_dir=engines, matmul_size=matmul_size, device=device,
                             exclude=[e.strip() for e in exclude.split(",")] if exclude else [],
                             ort_providers=[p.strip() for p in ort_providers.split(",")] if ort_providers else None,
                             min_dice_agreement=min_dice_agreement, max_latency_ratio=max_latency_ratio,
                             require_all=require_all, self_check=not no_self_check)
    model = load_model(preset, checkpoint, sam_checkpoint, ablation_overrides(text_model))
    run_benchmark(model, out, settings, onnx_dir=onnx, force=force, log=typer.echo)
    typer.echo(f"wrote {out}/results.json, {out}/report.md and plots")
