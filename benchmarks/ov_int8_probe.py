"""Probe, not a product path yet: OpenVINO INT8 by NNCF post-training quantisation of an export's
FP32 image graph, against ONNX Runtime FP32 in the same run (batch 1, 2 threads).

    python benchmarks/ov_int8_probe.py EXPORT_DIR DATA_ROOT [CALIBRATION_IMAGES]

Needs `pip install nncf` beside the `cpu` extra (a venv of its own is safest: NNCF's
statistics collection for vit_b at 1024 px used about 22 GB). Prints the NNCF time, the latency
ratio to ORT FP32 and the worst/mean mask agreement on 4 QaTa Val images.
"""
import sys, time
from pathlib import Path
import numpy as np
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lga_export.artifact import open_export
from lga_export.runtime.registry import open_runner
from lga_export.runtime.pipeline import Segmenter
from lga_export.samples import validation_samples
from lga_export.export.quantize import calibration_samples
from lga_export.parity import compare
import openvino as ov, nncf

exp, data = sys.argv[1], Path(sys.argv[2])
art = open_export(exp)
ort = open_runner("ort", exp, threads=2)
seg = Segmenter(ort)
count = int(sys.argv[3]) if len(sys.argv) > 3 else 16
cal, src = calibration_samples(count, data)
feeds = [{"image": seg.image_batch([rgb]), "text_embedding": seg.text_embeddings([text])} for _, rgb, text in cal]
val, _ = validation_samples(4, data)
vfeeds = [{"image": seg.image_batch([s.rgb]), "text_embedding": seg.text_embeddings([s.text])} for s in val]
ref = np.concatenate([ort.infer("lga_image", f)["mask_logits"] for f in vfeeds])
def lat(fn, f, n=3):
    fn(f); ts = []
    for _ in range(n):
        t = time.perf_counter(); fn(f); ts.append(time.perf_counter() - t)
    return float(np.median(ts))
t_ort = lat(lambda f: ort.infer("lga_image", f), vfeeds[0])
core = ov.Core()
model = core.read_model(str(art.graph("lga_image", "fp32")))
t0 = time.perf_counter()
q = nncf.quantize(model, nncf.Dataset(feeds), model_type=nncf.ModelType.TRANSFORMER, subset_size=count)
print(f"nncf.quantize on {count} images ({src.split(' (')[0]}): {time.perf_counter()-t0:.0f} s", flush=True)
for hint in ("f32", "bf16"):
    c = core.compile_model(q, "CPU", {"INFERENCE_NUM_THREADS": 2, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": hint})
    req = c.create_infer_request()
    run = lambda f: req.infer(f)
    out = np.concatenate([np.array(req.infer(f)[c.output(0)], copy=True) for f in vfeeds])
    p = compare(ref, out, [s.name for s in val], masks=True)
    t = lat(run, vfeeds[0])
    print(f"OV INT8 (rest {hint}): {t*1000:.0f} ms vs ORT FP32 {t_ort*1000:.0f} ms = {t/t_ort:.3f}x; worst agreement {p.dice_worst:.4f}, mean {p.dice_mean:.4f}", flush=True)
