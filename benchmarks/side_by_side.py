"""One table from several lga-bench runs made on the same machine (issue #19 item 5, #20 item 4).

    python benchmarks/side_by_side.py RECORD_DIR [RECORD_DIR ...] [--out FILE.md]

Each RECORD_DIR is a `benchmarks/cpu_record.sh` output (its `bench/results.json`) or a folder
holding a `results.json`. Per model, backend/precision and batch it prints the end-to-end p50, the
ratio to PyTorch FP32 end to end at the same batch, the image graph's p50 and its ratio to ONNX
Runtime FP32's, end to end over the sum of the graphs (what runs outside the graphs), and the worst
mask agreement with PyTorch FP32. Ratios are only comparable inside one run of one machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _results(folder: Path) -> dict:
    for candidate in (folder / "bench" / "results.json", folder / "results.json"):
        if candidate.is_file():
            return json.loads(candidate.read_text())
    raise SystemExit(f"side_by_side: no results.json in {folder} or {folder}/bench; give a cpu_record.sh folder")


def _p50(batch_figures: dict, graph: str) -> float | None:
    figures = (batch_figures.get("latency") or {}).get(graph) or {}
    return figures.get("p50_ms")


def _ratio(value: float | None, reference: float | None) -> str:
    return f"{value / reference:.3f}x" if value and reference else "-"


def rows(results: dict) -> list[str]:
    """Markdown rows for one run: every case and batch, ratios against the same run's references."""
    model = results.get("model", {})
    name = (model.get("config") or {}).get("preset") or "?"
    cases = results["cases"]
    lines = []
    for case, figures in cases.items():
        for batch, batch_figures in sorted(figures["batches"].items(), key=lambda item: int(item[0])):
            end_to_end = _p50(batch_figures, "end_to_end")
            image = _p50(batch_figures, "lga_image")
            text = _p50(batch_figures, "text_encoder")
            torch_e2e = _p50(cases.get("torch-fp32", {}).get("batches", {}).get(batch, {}), "end_to_end")
            ort_image = _p50(cases.get("ort-fp32", {}).get("batches", {}).get(batch, {}), "lga_image")
            graphs = (image or 0) + (text or 0) if image else None
            parity = batch_figures.get("parity") or {}
            worst = (parity.get("end_to_end") or {}).get("dice_worst")
            verdict = "reference" if case == "torch-fp32" else ("pass" if parity.get("passed") else "FAIL")
            lines.append(f"| {name} | {case} | {batch} | {end_to_end:.0f} | {_ratio(end_to_end, torch_e2e)} | "
                         f"{image:.0f} | {_ratio(image, ort_image)} | {_ratio(end_to_end, graphs)} | "
                         f"{'-' if worst is None else f'{worst:.4f}'} {verdict} |"
                         if end_to_end and image else f"| {name} | {case} | {batch} | - | - | - | - | - | - |")
    return lines


def table(folders: list[Path]) -> str:
    runs = [_results(folder) for folder in folders]
    machine = runs[0].get("machine", {})
    head = [f"CPU: {machine.get('cpu', '?')}, flags {' '.join(machine.get('cpu_flags', []))}",
            "",
            "| model | case | batch | end to end p50 ms | vs PyTorch FP32 | image graph p50 ms | vs ORT FP32 "
            "image | end to end / graphs | worst agreement |",
            "|---|---|---|---|---|---|---|---|---|"]
    body = [line for results in runs for line in rows(results)]
    loads = [f"- {folder}: load {results.get('machine', {}).get('load_average_start')} -> "
             f"{results.get('machine', {}).get('load_average_end')}" for folder, results in zip(folders, runs)]
    return "\n".join(head + body + ["", "Load averages (1/5/15 min) at each run's start and end:"] + loads) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, help="Also write the table to this Markdown file.")
    args = parser.parse_args(argv)
    text = table(args.records)
    sys.stdout.write(text)
    if args.out:
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
