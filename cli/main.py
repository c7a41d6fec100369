"""`lga-export`: build, inspect, export and run LGA models.

Thin commands: each parses its options, imports heavy modules inside the function, and
calls one library function.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from lga_export.cli.common import (CheckpointOption, DebugOption, NumFfmsOption, PresetOption, SamCheckpointOption,
                                   TextMlpOption, TextModelOption, VitMlpOption, ablation_overrides, quiet_libraries,
                                   set_debug, user_errors)

app = typer.Typer(
    help="LGA (a text-guided adapter on SAM) from PyTorch to verified ONNX Runtime and TensorRT inference.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)


@app.callback()
def main(debug: bool = DebugOption) -> None:
    """LGA (a text-guided adapter on SAM) from PyTorch to verified ONNX Runtime and TensorRT inference.

    Exit codes: 0 success, 2 bad input (one line names the problem and the fix), 3 a failed check
    (export validation, NaN/Inf outputs, a benchmark gate), 1 an unforeseen error (--debug shows it).
    """
    set_debug(debug)


@app.command()
@user_errors
def info(
    preset: Optional[str] = PresetOption,
    checkpoint: Optional[Path] = CheckpointOption,
    sam_checkpoint: Optional[Path] = SamCheckpointOption,
    text_model: Optional[str] = TextModelOption,
    num_ffms: Optional[int] = NumFfmsOption,
    text_mlp: Optional[bool] = TextMlpOption,
    vit_mlp: Optional[bool] = VitMlpOption,
    learnable_query: bool = typer.Option(False, "--learnable-query", help="Replace the text by a learned query (Table 2)."),
    train_all: bool = typer.Option(False, "--train-all", help="Train the ViT and text encoder too."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Show a model's configuration and trainable / frozen parameter counts per part.

    Without --preset or --checkpoint this describes the embedded default model.
    """
    quiet_libraries()
    from lga_export.loading import load_model
    from lga_export.summary import model_summary, render_summary

    overrides = ablation_overrides(text_model, num_ffms, text_mlp, vit_mlp, learnable_query, train_all)
    model = load_model(preset, checkpoint, sam_checkpoint, overrides)
    summary = model_summary(model)
    typer.echo(json.dumps(summary, indent=2) if as_json else render_summary(summary))


@app.command()
@user_errors
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Folder for the demo's outputs."),
    force: bool = typer.Option(False, "--force", help="Replace an existing demo folder."),
) -> None:
    """Run the main job on the embedded default model: export, validate, segment, benchmark.

    Prints the model summary, exports FP32 + FP16 + INT8 ONNX graphs validated against PyTorch on
    real images, draws masks with the exported graphs, and ends with lga-bench's report
    (PyTorch FP32/BF16 vs ONNX Runtime FP32/FP16/INT8 and OpenVINO FP32/BF16) and a headline of
    every CPU deployment path with its figure.

    Exit 0 when the export validates and at least one CPU deployment path passes its gate; a
    backend that fails on this CPU is shown as FAIL with its figure, not fatal (lga-bench exits 3
    on it). Exit 3 when the export does not validate or no deployment path passes.
    """
    quiet_libraries()
    from lga_export.demo import run_demo

    run_demo(out, force=force, log=typer.echo)
    typer.echo(f"demo outputs in {out}")


# --- command registration: each command module adds its commands here, one line each ---
from lga_export.cli.export import register as _register_export; _register_export(app)  # noqa: E402,E702
from lga_export.cli.train import register as _register_train; _register_train(app)  # noqa: E402
from lga_export.cli.trt import register as _register_trt; _register_trt(app)  # noqa: E402
from lga_export.cli.serve import register as _register_serve; _register_serve(app)  # noqa: E402


if __name__ == "__main__":
    app()
