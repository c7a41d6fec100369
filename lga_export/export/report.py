"""Human-readable rendering of an export's validation figures."""

from __future__ import annotations

from typing import Any


def render_validation(report: dict[str, Any]) -> str:
    lines = [f"validation at batch {report['batch']} on {report['source']}:",
             f"{'precision':<10}{'graph':<14}{'max |diff|':>12}{'Dice mean':>11}{'Dice worst':>12}{'NaN/Inf':>9}  result"]
    for precision, result in report["results"].items():
        for graph, entry in result.items():
            if graph == "providers":
                continue
            mean = f"{entry['dice_mean']:.5f}" if entry["dice_mean"] is not None else "-"
            worst = f"{entry['dice_worst']:.5f}" if entry["dice_worst"] is not None else "-"
            verdict = "pass" if entry["passed"] else "FAIL: " + "; ".join(entry["problems"])
            lines.append(f"{precision:<10}{graph:<14}{entry['max_abs_diff']:>12.3g}{mean:>11}{worst:>12}"
                         f"{entry['nonfinite']:>9}  {verdict}")
    return "\n".join(lines)
