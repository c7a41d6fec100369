"""CI gates: worst per-sample mask agreement (per precision, from the spec unless overridden),
NaN/Inf, a failed self-check of a reduced precision on this machine (runtime/self_check.py),
image-graph latency ratio against the reference, and that something was compared."""

from __future__ import annotations

from lga_export.bench.results import BenchResults, Gates
from lga_export.contract import TEXT_GRAPH, tolerance


def check_gates(results: BenchResults, min_dice_agreement: float | None, max_latency_ratio: float | None,
                require_all: bool = False) -> Gates:
    """One line per failed check, naming the backend, precision and batch. A gate that compared
    nothing fails: an all-skipped run proves nothing."""
    failures: list[str] = []
    reference = results["reference"]
    compared = [label for label in results["cases"] if label != reference]
    if not compared:
        reasons = "; ".join(f"{s['backend']}-{s['precision']}: {s['reason']}" for s in results["skipped"]) or "none requested"
        failures.append(f"no backend was compared with {reference} ({reasons})")
    thresholds: dict[str, float] = {}
    by_case: dict[str, list[str]] = {}  # label -> its failures (what the headline shows per case)
    for label in compared:
        before = len(failures)
        case = results["cases"][label]
        threshold = min_dice_agreement if min_dice_agreement is not None else tolerance(case["precision"]).min_dice
        thresholds[label] = threshold
        check = case.get("self_check") or {}
        if check.get("passed") is False:
            figure = check.get("figure") or {}
            worst = figure.get("worst_agreement")
            failures.append(f"{label}: self-check failed on {check.get('host')} against {check.get('reference')} "
                            f"(worst mask agreement {'none' if worst is None else f'{worst:.4f}'} < {figure.get('gate')}, "
                            f"{figure.get('nonfinite', 0)} NaN/Inf on {check.get('sample') or 'the built-in check sample'})")
        for batch, figures in case["batches"].items():
            parity = figures["parity"]["end_to_end"]
            worst = parity["dice_worst"]
            nonfinite = parity["nonfinite"] + figures["parity"][TEXT_GRAPH]["nonfinite"]
            if nonfinite:
                failures.append(f"{label} batch {batch}: {nonfinite} NaN/Inf outputs")
            if worst is None or worst < threshold:
                shown = "none" if worst is None else f"{worst:.4f}"
                failures.append(f"{label} batch {batch}: worst mask Dice agreement {shown} < {threshold} "
                                f"(sample {parity['worst_sample']})")
            ratio = figures.get("image_latency_ratio")
            if max_latency_ratio is not None and ratio is not None and ratio > max_latency_ratio:
                failures.append(f"{label} batch {batch}: image-graph p50 latency ratio vs {reference} "
                                f"{ratio:.3g} > {max_latency_ratio}")
        if len(failures) > before:
            by_case[label] = [f[len(label):].lstrip(": ") for f in failures[before:]]
    if require_all:
        failures += [f"{s['backend']}-{s['precision']} did not run: {s['reason']}" for s in results["skipped"]]
    return {"min_dice_agreement": thresholds, "max_latency_ratio": max_latency_ratio, "require_all": require_all,
            "failures": failures, "by_case": by_case, "passed": not failures}
