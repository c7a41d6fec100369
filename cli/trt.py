"""`lga-export trt`: build TensorRT engines from an ONNX export folder (thin; TensorRT imported lazily)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from lga_export.cli.common import user_errors


@user_errors
def trt(
    onnx: Path = typer.Option(Path("runs/onnx"), "--onnx", help="ONNX export folder written by lga-export onnx."),
    fp16: bool = typer.Option(False, "--fp16", help="Build from the FP16 graphs (*.fp16.onnx), strongly typed."),
    min_batch: int = typer.Option(1, "--min-batch", help="Smallest batch the engines accept."),
    opt_batch: Optional[int] = typer.Option(None, "--opt-batch", help="Batch TensorRT tunes for (default: 2, "
                                            "clamped to --min-batch..--max-batch)."),
    opt_text_length: Optional[int] = typer.Option(None, "--opt-text-length", help="Token count TensorRT tunes the "
                                                  "text engine for (default: 32, a typical report, clamped)."),
    max_batch: int = typer.Option(4, "--max-batch", help="Largest batch the engines accept."),
    max_text_length: Optional[int] = typer.Option(None, "--max-text-length",
                                                  help="Longest token sequence (default: the model's max_text_length)."),
    workspace: Optional[float] = typer.Option(None, "--workspace", help="Builder workspace limit in GB (default: TensorRT's)."),
    timing_cache: Optional[Path] = typer.Option(None, "--timing-cache",
                                                help="Tactic timing cache file: read if present, updated after the build."),
    out: Optional[Path] = typer.Option(None, "--out", help="Engine folder (default: <onnx>-trt beside the export folder)."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing engines."),
) -> None:
    """Build one TensorRT engine per graph, each with a manifest and a per-layer precision report.

    Needs TensorRT and an NVIDIA GPU; engines only load on the same GPU model and TensorRT version.
    """
    from lga_export.trt_engines.build import build_engines

    built = build_engines(onnx, out, fp16=fp16, min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch,
                          max_text_length=max_text_length, opt_text_length=opt_text_length, workspace_gb=workspace, timing_cache=timing_cache,
                          force=force)
    for engine in built:
        counts = ", ".join(f"{n} {p}" for p, n in engine.precision_counts.items())
        typer.echo(f"{engine.files.engine}  ({engine.seconds:.1f} s; layers: {counts})")


def register(app: typer.Typer) -> None:
    """Add the `trt` command to the lga-export app."""
    app.command(name="trt")(trt)
