"""Which (backend, precision) pairs run here, and why the others do not.

Nothing is dropped silently: every requested pair either runs or gets a reason. The reasons
come from what each runner class declares (precisions, sources, INT8 graph, `unavailable`),
never from its name; runners come from the runner factory like everywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from lga_export.errors import LGAError
from lga_export.runtime.base import ENGINES, EXPORT
from lga_export.runtime.registry import backend_names, int8_backend, runner_class, unavailable

BACKENDS = backend_names()  # the built-in backends; BenchSettings checks against backend_names() at run time


@dataclass(frozen=True)
class Case:
    backend: str
    precision: str

    @property
    def label(self) -> str:
        return f"{self.backend}-{self.precision}"


REFERENCE = Case("torch", "fp32")


def parse_list(text: str | list[str] | tuple[str, ...], allowed: tuple[str, ...], what: str,
               canonical: Callable[[str], str] = str.strip) -> list[str]:
    """Comma list -> validated, de-duplicated list in the given order; `canonical` maps each item
    to its allowed spelling first (backend aliases)."""
    items = [canonical(t) for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    unknown = [t for t in items if t not in allowed]
    if unknown or not items:
        raise LGAError(f"unknown {what} {unknown or '(none given)'}; choose from {', '.join(allowed)}")
    return list(dict.fromkeys(items))


def requested_cases(backends: list[str], precisions: list[str]) -> list[Case]:
    """The reference first, then every requested pair."""
    cases = [REFERENCE]
    cases += [Case(b, p) for b in backends for p in precisions if Case(b, p) != REFERENCE]
    return cases


def _export_problem(cls: type, precision: str, export_precisions: list[str] | None,
                    int8_owner: str | None) -> str | None:
    """Why an export-backed backend cannot run `precision` from this export (None: it can)."""
    if export_precisions is None:
        return None
    owner = runner_class(int8_owner) if int8_owner is not None else None
    if precision == "int8" and owner is not None and owner.int8_format != cls.int8_format:
        return (f"the export's INT8 graph is {owner.int8_graph} (--int8 {'|'.join(owner.int8_methods)}): "
                f"{owner.backend}-int8 runs it")
    stored = cls.stored_precision(precision)
    if stored not in export_precisions:
        flag = {"fp16": " --fp16", "int8": f" --int8 {(cls.int8_methods or ('dynamic',))[0]}"}.get(stored, "")
        return f"the export folder has no {stored} graphs; re-export with lga-export onnx{flag}"
    return None


def static_skip_reason(case: Case, device: str, export_precisions: list[str] | None,
                       engines_dir: Path | None, int8_backend: str | None = None) -> str | None:
    """Why `case` cannot run here, known before anything is loaded (None: try it), from what its
    runner class declares. `int8_backend`: the backend that runs the export's INT8 graph
    (`registry.int8_backend`)."""
    cls = runner_class(case.backend)
    if case.precision not in cls.precisions:
        return unavailable(case.backend, case.precision, device)
    if EXPORT in cls.sources:
        problem = _export_problem(cls, case.precision, export_precisions, int8_backend)
        if problem:
            return problem
    if ENGINES in cls.sources and engines_dir is None:
        return "no --engines folder given (build engines with lga-export trt)"
    return cls.unavailable(case.precision, device)


def plan_cases(backends: list[str], precisions: list[str], device: str, artifact: Any, engines_dir: Path | None,
               exclude: list[str], export_problem: str | None = None) -> tuple[list[Case], list[dict[str, str]]]:
    """(cases to run, skipped cases with their reasons): the reference first, then every requested
    pair that its runner class says can run here from these sources."""
    owner = int8_backend(artifact) if artifact is not None else None
    runnable, skipped = [], []
    for case in requested_cases(backends, precisions):
        reason = static_skip_reason(case, device, artifact.precisions if artifact else None, engines_dir, owner)
        if case.label in exclude and case != REFERENCE:
            reason = "excluded with --exclude"
        if reason is None and EXPORT in runner_class(case.backend).sources and artifact is None:
            reason = export_problem or "no ONNX export"
        if reason:
            skipped.append({"backend": case.backend, "precision": case.precision, "reason": reason})
        else:
            runnable.append(case)
    return runnable, skipped


def export_needs(backends: list[str], precisions: list[str], exclude: list[str]) -> tuple[set[str], bool]:
    """(export precisions the requested export-backed cases read, whether one wants the dynamic
    INT8 graph that lga-bench can make itself; calibrated INT8 needs an export given with --onnx)."""
    needed: set[str] = set()
    dynamic_int8 = False
    for backend in backends:
        cls = runner_class(backend)
        if EXPORT not in cls.sources:
            continue
        for precision in precisions:
            if precision in cls.precisions and f"{backend}-{precision}" not in exclude:
                needed.add(cls.stored_precision(precision))
                dynamic_int8 |= precision == "int8" and "dynamic" in cls.int8_methods
    return needed, dynamic_int8
