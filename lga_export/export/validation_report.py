"""Human-readable rendering of an export's validation figures."""

from __future__ import annotations

from typing import Any

from lga_export.contract import IMAGE_GRAPH, TEXT_GRAPH

_PARTS = (TEXT_GRAPH, IMAGE_GRAPH, "end_to_end")


def render_validation(report: dict[str, Any]) -> str:
    lines = [f"validation at batch {report['batch']} on {report['source']}:",
             f"{'precision':<10}{'part':<14}{'max |diff|':>12}{'Dice mean':>11}{'Dice worst':>12}{'ref fg':>8}"
             f"{'NaN/Inf':>9}"]
    for precision, result in report["results"].items():
        for part in _PARTS:
            entry = result.get(part)
            if entry is None:
                continue
            mean = f"{entry['dice_mean']:.5f}" if entry["dice_mean"] is not None else "-"
            worst = f"{entry['dice_worst']:.5f}" if entry["dice_worst"] is not None else "-"
            foreground = entry["reference_foreground"]
            fg = f"{sum(foreground) / len(foreground):.3f}" if foreground else "-"
            lines.append(f"{precision:<10}{part:<14}{entry['max_abs_diff']:>12.3g}{mean:>11}{worst:>12}{fg:>8}"
                         f"{entry['nonfinite']:>9}")
        verdict = "pass" if result["passed"] else "FAIL: " + "; ".join(result["problems"])
        lines.append(f"{precision:<10}{'result':<14}{verdict}")
        if result.get("reference_masks_empty"):
            lines.append(f"{'':<10}warning: every reference mask is empty; the mask agreement proves nothing")
    return "\n".join(lines)
