"""Masks of every backend and precision on sample images, to prove a refactor changes none.

    PYTHONPATH=<checkout under test> python benchmarks/mask_snapshot.py OUT EXPORTS
    diff -r OUT_before OUT_after          # byte-identical masks and overlays, case by case

Writes OUT/<model>-<backend>-<precision>/ (mask and overlay per image) for tiny (PyTorch, ORT
FP32/FP16/INT8 dynamic, OpenVINO FP32/BF16/INT8 NNCF, and the INT8 default backend) and lite
(PyTorch, ORT FP32/FP16, OpenVINO FP32) on 4 validation images (QaTa Val when ../shared/data is
there, else the built-in samples). The exports are made into EXPORTS on the first run and reused,
so a later run with other code reads the same graphs."""
import sys
from pathlib import Path
from PIL import Image
out = Path(sys.argv[1]); exports = Path(sys.argv[2])
from lga_export.samples import validation_samples
from lga_export.loading import load_model, embedded_checkpoint
from lga_export.predict import predict_files
data = Path("/work/shared/data")
samples, _ = validation_samples(4, data if (data / "qata-cov19").is_dir() else None)
img = out / "img"; img.mkdir(parents=True, exist_ok=True)
rows = []
for s in samples:
    name = Path(s.name).with_suffix(".png").name
    Image.fromarray(s.rgb).save(img / name); rows.append(f'{name},"{s.text}"\n')
(out / "text.csv").write_text("Image,Description\n" + "".join(rows))
if not exports.exists():
    from lga_export.export.exporter import export_onnx
    tiny = load_model("tiny")
    export_onnx(tiny, exports / "tiny-dyn", fp16=True, int8="dynamic", log=lambda _: None)
    export_onnx(tiny, exports / "tiny-ov", int8="ov", calibration_samples=32, log=lambda _: None)
    export_onnx(load_model("lite"), exports / "lite-fp16", fp16=True, log=lambda _: None, drop_failing_reduced=True)
cases = [("tiny", "torch", "fp32", None), ("tiny", "ort", "fp32", "tiny-dyn"), ("tiny", "ort", "fp16", "tiny-dyn"),
         ("tiny", "ort", "int8", "tiny-dyn"), ("tiny", "ov", "fp32", "tiny-dyn"), ("tiny", "ov", "bf16", "tiny-dyn"),
         ("tiny", "ov", "int8", "tiny-ov"), ("tiny", None, "int8", "tiny-ov"),
         ("lite", "torch", "fp32", None), ("lite", "ort", "fp32", "lite-fp16"), ("lite", "ort", "fp16", "lite-fp16"),
         ("lite", "ov", "fp32", "lite-fp16")]
for model, backend, precision, folder in cases:
    target = out / f"{model}-{backend}-{precision}"
    ref = exports / folder if folder else embedded_checkpoint(model)
    predict_files(ref, images=img, text_file=out / "text.csv", out=target, backend=backend, precision=precision,
                  force=True)
    print("done", target, flush=True)
