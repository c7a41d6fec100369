"""`lga-export onnx` and `lga-export predict`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from lga_export.cli.common import (BackendOption, CheckpointOption, FallbackOption, ModelOption, NoSelfCheckOption,
                                   PrecisionOption, PresetOption, SamCheckpointOption, TextModelOption, self_check_mode,
                                   ablation_overrides, quiet_libraries, user_errors)


@user_errors
def onnx(
    preset: Optional[str] = PresetOption,
    checkpoint: Optional[Path] = CheckpointOption,
    sam_checkpoint: Optional[Path] = SamCheckpointOption,
    text_model: Optional[str] = TextModelOption,
    out: Path = typer.Option(Path("runs/onnx"), "--out", "-o", help="Export folder (created atomically)."),
    fp16: bool = typer.Option(False, "--fp16", help="Also write the FP16 graph pair (*.fp16.onnx) for TensorRT."),
    int8: Optional[str] = typer.Option(None, "--int8", metavar="dynamic|static|ov", help="Also write an INT8 image "
                                       "graph for the CPU, paired with the FP32 text graph: 'ov' (NNCF, calibrated; "
                                       "lga_image.int8.xml for --backend ov: the fastest where the CPU has VNNI/AMX; "
                                       "needs lga-export[int8]), 'dynamic' (ONNX Runtime, no calibration) or 'static' "
                                       "(ONNX Runtime QDQ, calibrated) - both lga_image.int8.onnx for --backend ort."),
    calibration_samples: int = typer.Option(64, "--calibration-samples", help="Training images that calibrate "
                                            "--int8 static|ov (QaTa Train under --data, else built-in samples)."),
    opset: int = typer.Option(18, "--opset", help="ONNX opset (the dynamo exporter needs >= 18)."),
    validate: bool = typer.Option(True, "--validate/--no-validate", help="Check both graphs against PyTorch."),
    batch: int = typer.Option(3, "--validation-batch", help="Batch size of the validation run (not the traced one)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Data root with qata-cov19/ for validation "
                                        "inputs (default: ../shared/data when present, else built-in samples)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing export folder."),
) -> None:
    """Export the text graph and the fused image graph to ONNX, then validate them.

    Writes text_encoder.onnx, lga_image.onnx (and *.fp16.onnx with --fp16, lga_image.int8.onnx with
    --int8 dynamic|static, lga_image.int8.xml/.bin with --int8 ov), the tokenizer and manifest.json (sha256 of every file and the model's digest). A failed
    validation writes nothing and exits with code 3.
    """
    quiet_libraries()
    from lga_export.export.exporter import export_onnx
    from lga_export.export.validation_report import render_validation
    from lga_export.loading import load_model

    from lga_export.export.onnx_export import check_opset

    check_opset(opset)
    from lga_export.export.quantize import int8_method

    int8 = int8_method(int8, calibration_samples)
    model = load_model(preset, checkpoint, sam_checkpoint, ablation_overrides(text_model))
    manifest = export_onnx(model, out, fp16=fp16, int8=int8 or False, opset=opset, force=force, validate=validate,
                           validation_batch=batch, data_root=data, calibration_samples=calibration_samples,
                           log=typer.echo)
    if manifest["validation"]:
        typer.echo(render_validation(manifest["validation"]))
    typer.echo(f"wrote {out}")


@user_errors
def predict(
    model: Optional[Path] = ModelOption,
    backend: Optional[str] = BackendOption,
    precision: str = PrecisionOption,
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda[:N] (default: cuda for an engine "
                                         "folder, else cpu)."),
    image: Optional[Path] = typer.Option(None, "--image", help="One image file."),
    text: Optional[str] = typer.Option(None, "--text", help="The report for --image."),
    images: Optional[Path] = typer.Option(None, "--images", help="A folder of images (with --text-file)."),
    text_file: Optional[Path] = typer.Option(None, "--text-file", help="LViT text file (.csv/.xlsx: Image, "
                                             "Description or text) for --images."),
    out: Path = typer.Option(Path("runs/predict"), "--out", "-o", help="Folder for masks and overlays."),
    threshold: float = typer.Option(0.0, "--threshold", help="Logit threshold of the mask."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing mask files."),
    use_ray: bool = typer.Option(False, "--ray", help="Run on Ray Data: a pool of runner actors, same files "
                                 "and masks (needs the serve extra)."),
    address: Optional[str] = typer.Option(None, "--address", help="With --ray: join this Ray cluster (auto, "
                                          "HOST:PORT); default: a local Ray instance."),
    workers: int = typer.Option(2, "--workers", help="With --ray: number of runner actors."),
    no_self_check: bool = NoSelfCheckOption,
    fallback_fp32: bool = FallbackOption,
) -> None:
    """Segment images with their reports: writes <name>_mask.png and <name>_overlay.png.

    Images: PNG, JPEG, TIFF (8/16-bit, float) and DICOM. Every input is checked before the first
    inference and all outputs are published together; NaN/Inf logits exit 3 and write nothing.
    """
    quiet_libraries()
    from lga_export.predict import predict_files

    if use_ray:
        from lga_export.serve.ray_predict import predict_files_ray

        written = predict_files_ray(model, image=image, text=text, images=images, text_file=text_file, out=out,
                                    threshold=threshold, force=force, backend=backend, precision=precision,
                                    device=device, progress=True, workers=workers, address=address,
                                    self_check=self_check_mode(no_self_check, fallback_fp32))
    elif address is not None:
        from lga_export.errors import LGAError

        raise LGAError("--address joins a Ray cluster for --ray; add --ray or drop --address")
    else:
        written = predict_files(model, image=image, text=text, images=images, text_file=text_file, out=out,
                                threshold=threshold, force=force, backend=backend, precision=precision,
                                device=device, progress=True, self_check=self_check_mode(no_self_check, fallback_fp32))
    for path in written:
        typer.echo(f"wrote {path}")


def register(app: typer.Typer) -> None:
    app.command("onnx")(onnx)
    app.command("predict")(predict)
