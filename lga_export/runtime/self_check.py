"""Reduced precision verifies itself where it runs (issue #20 item 2).

An export validated on one machine says nothing about the machine, the runtime version or the
cache state it is deployed with: OpenVINO 2026.4.1 once handed a BF16 compile the FP32 blob and
returned NaN logits on a BF16 CPU while every record made elsewhere was fine. So the first time
a runner opens a graph at a reduced precision that its class declares self-checked
(`Runner.self_checked`: OpenVINO bf16/int8, ONNX Runtime fp16/int8, TensorRT fp16) on a machine,
the runner factory (`registry.open_runner`) runs the check sample through that runner and through
the FP32 graphs of the same export on the same backend, and compares them with the comparator at
the precision's tolerance (`contract.tolerance`: worst mask Dice agreement, never a NaN/Inf), at
batch 1. The sample is the export's own (`check_sample.png` and its report, the first image it was
validated on, written by `lga-export onnx` and listed with its sha256 in the verified manifest), so
an X-ray model is checked on an X-ray; an export without one (older, or an engine folder) uses the
built-in sample (`check_sample.CHECK`: one synthetic chest X-ray with a QaTa-style report), which is out of
distribution for a model trained on real X-rays (lite's INT8 agreed 0.9575 on it, 0.9952 on eight
QaTa Val images).

The verdict is cached beside the compiled models (`Runner.self_check_root`: the runner's own
compile-cache folder, `~/.cache/lga-export/<runtime>/self-check.<backend>-<precision>.<key>`),
as an entry of `compile_cache` (one folder, its record written last, verified before use, private
to the user), keyed by the check itself, the tolerance, and what the runner says the result
depends on (`Runner.self_check_identity`): the sha256 of the graphs at that precision and of the
FP32 reference graphs, the model digest, the runtime's version and the settings that change what
is built, and the machine (CPU model and SIMD flags from `host.cpu_identity`, or GPU name and
compute capability). A second open on the same machine reads the verdict (no inference).

What a failed check does (`MODES`):
- `refuse` (an explicit `--precision`, the factory's default): one line naming the CPU, the
  figure and the precision that passes; ValidationFailed (exit 3). A cached failure refuses
  before anything is compiled.
- `fallback` (`--fallback-fp32`, or a caller that did not insist on the precision): the factory
  returns the FP32 runner instead, with one warning line; `description().fallback` says why.
- `record` (lga-bench): the verdict is recorded and the case still runs, so the report carries
  its figures; lga-bench's gate fails on a failed self-check (strict exit codes for CI).
- `off` (`--no-self-check`, for users who validated the machine themselves): skipped, recorded
  as skipped.

Every runner records the outcome as `runner.self_check` (a SelfCheck): in `describe()`,
`description().self_check`, lga-bench's results.json and report, and serve's /v1/model.

Cost (`benchmarks/self_check_cost.py`, median of 3 runs, each in fresh cache folders; the idle
2-core AMD EPYC with avx512_bf16, OpenVINO 2026.4.1, ONNX Runtime 1.32.0, 2026-12-01; record
`benchmarks/records/2026-12-01-self-check-cost-idle`). "check" is the self-check's own share of the
first open (the FP32 reference opened and compiled, the sample through both, the verdict stored);
"first open" is the whole first open with it, "without" the same first open with --no-self-check;
"cached" is a later open (the verdict read in under a millisecond; the rest is the runner's own
start-up from its compile cache):

| model | case | verdict (worst agreement) | check s | first open s | without s | cached open s | verdict lookup ms |
| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |
| lite (the embedded default) | ov-bf16 | failed (0.9540 < 0.99) | 4.22 | 6.28 | 2.02 | 1.19 | 0.5 |
| lite | ort-fp16 | passed (0.9977) | 4.25 | 5.03 | 0.77 | 0.41 | 0.4 |
| lite | ort-int8 (dynamic) | failed (0.8909 < 0.98) | 3.75 | 4.35 | 0.60 | 0.38 | 0.4 |
| tiny | ov-bf16 | passed (0.9988) | 2.24 | 4.10 | 1.84 | 0.97 | 0.4 |
| tiny | ort-fp16 | passed (0.9999) | 0.98 | 1.62 | 0.56 | 0.29 | 0.5 |
| tiny | ov-int8 | passed (0.9985) | 1.64 | 3.11 | 1.70 | 0.91 | 0.5 |

Those two lite failures were the stage-2 lite on the built-in sample (its INT8 then missed the
export's 0.98 gate on QaTa images too). The shipped stage-5 lite exported with `--data` (QaTa Val)
checks itself on an X-ray: ort-int8 0.9989, ort-fp16 0.9999, ov-bf16 0.9988 (2-core AMD EPYC
with avx512_bf16, 2026-12-02); on the built-in sample its INT8 agreed 0.9575 (AMX Xeon) and failed. One image
catches a broken kernel or blob, not a model's sensitivity: lga-bench measures parity on many images
(lite's ov-bf16 worst over 8 Val images: 0.973, `benchmarks/records/2026-12-02-lite-int8-bf16-islands`).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from lga_export.errors import LGAError, ValidationFailed
from lga_export.runtime import compile_cache
from lga_export.runtime.check_sample import CheckSample, builtin_check
from lga_export.runtime.host import touch_cache_entry

MODES = ("refuse", "fallback", "record", "off")
# The check itself (part of every key: another sample or batch is another verdict).
VERDICT = "verdict.json"
PREFIX = "self-check."
# SIMD flags that decide how a precision runs, named in the verdict's one line.
RELEVANT_FLAGS = {"bf16": ("avx512_bf16", "amx_bf16"), "fp16": ("avx512_fp16", "amx_fp16", "f16c"),
                  "int8": ("avx512_vnni", "avx_vnni", "amx_int8")}
COMPUTED = 0  # checks computed (not read from the cache) in this process: tests assert on it


@dataclass
class SelfCheck:
    """The outcome of one runner's self-check, as describe(), description() and lga-bench record it.

    `state`: passed, failed, skipped (--no-self-check), not run (it could not run, or the runner does
    not compute in this precision here); `cached`: the verdict was read, not computed, this time;
    `check_seconds`: what computing it cost (then or now); `seconds`: what this open paid for it."""

    label: str
    mode: str
    state: str
    cached: bool = False
    passed: bool | None = None
    host: str | None = None
    reference: str | None = None
    figure: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)
    check_seconds: float | None = None
    seconds: float = 0.0
    entry: str | None = None
    reason: str | None = None
    fallback: str | None = None
    sample: str | None = None  # what it ran on: the export's own check sample or the built-in one

    @property
    def ran(self) -> bool:
        """Whether a verdict applies (computed now or read from the cache)."""
        return self.passed is not None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ran": self.ran}

    def figure_text(self) -> str:
        f = self.figure or {}
        if not f:
            return "no figure"
        worst = "none" if f.get("worst_agreement") is None else f"{f['worst_agreement']:.4f}"
        return (f"worst mask agreement {worst} (gate {f.get('gate')}), {f.get('nonfinite', 0)} NaN/Inf, "
                f"max |logit diff| {f.get('max_abs_logit_diff', 0):.3g}")


@dataclass
class Plan:
    """What the factory attaches to a runner it opened at a self-checked precision: the mode and
    how to open the FP32 reference of the same source. `Runner.activate` calls `before` (a cached
    verdict) and `after` (computes it when there is none)."""

    mode: str
    make_reference: Callable[[], Any]
    key: dict[str, Any] | None = None
    entry: Path | None = None
    host: str = ""
    looked_up: bool = False
    pending: bool = False  # the key could not be known before activation

    builtin: CheckSample | None = None

    def sample(self, runner) -> CheckSample:
        """The artefact's own check sample (`Runner.check_sample`), else the built-in one (kept, so
        the key and the check share one object and its pixels are built once)."""
        if runner.check_sample is not None:
            return runner.check_sample
        if self.builtin is None:
            self.builtin = builtin_check()
        return self.builtin

    # -- the verdict's key and entry ------------------------------------------------------

    def prepare(self, runner) -> dict[str, Any] | None:
        """The key (None: the runner does not compute in this precision here; nothing to check)."""
        from lga_export.contract import tolerance

        identity = runner.self_check_identity()
        if identity is None:
            return None
        self.key = {"check": self.sample(runner).key, "backend": runner.backend, "precision": runner.precision,
                    "tolerance": asdict(tolerance(runner.precision)), **identity}
        self.host = host_label(identity.get("host", {}), runner.precision)
        root = runner.self_check_root()
        if root is not None:
            name = hashlib.sha256(json.dumps(compile_cache._plain(self.key), sort_keys=True).encode()).hexdigest()[:32]
            self.entry = root / f"{PREFIX}{runner.backend}-{runner.precision}.{name}"
        return self.key

    def cached(self, runner) -> SelfCheck | None:
        """The verified cached verdict, or None (absent, or discarded with one line: recomputed)."""
        if self.entry is None:
            return None
        start = time.perf_counter()
        status, _ = compile_cache.admit(self.entry, self.key)
        if status != "hit":
            return None
        try:
            stored = json.loads((self.entry / VERDICT).read_text())
            check = SelfCheck(**{k: v for k, v in stored.items() if k in SelfCheck.__dataclass_fields__})
        except (OSError, ValueError, TypeError) as exc:
            compile_cache.discard(self.entry, f"its verdict cannot be read ({type(exc).__name__})")
            return None
        touch_cache_entry(self.entry)
        return replace(check, mode=self.mode, cached=True, seconds=time.perf_counter() - start,
                       entry=str(self.entry))

    # -- called by Runner.activate ----------------------------------------------------------

    def before(self, runner) -> None:
        """Before the runner compiles anything: a cached verdict is recorded; a cached failure refuses.
        Runs once per runner (the fallback path looks the verdict up before activating). A key that
        cannot be known yet (TensorRT's GPU, read at activation) is looked up in `after`."""
        if self.looked_up:
            return
        self.looked_up = True
        try:
            key = self.prepare(runner)
        except Exception:  # noqa: BLE001 - e.g. no TensorRT here: activation says so in its own words
            self.pending = True
            return
        self._use_cached(runner, key, time.perf_counter())

    def after(self, runner) -> None:
        """After the runner is active: compute the verdict when none was cached, store it, and
        refuse a failure (mode refuse; Runner.activate deactivates the runner)."""
        if self.pending:
            self.pending = False
            if self._use_cached(runner, self.prepare(runner), time.perf_counter()):
                return
        if self.key is None or (runner.self_check is not None and runner.self_check.cached):
            return
        check = compute(runner, self)
        runner.self_check = check
        if check.state == "not run":
            compile_cache.say(f"warning: {runner.label} self-check did not run: {check.reason}")
            return
        if check.passed:
            compile_cache.say(f"self-check: {runner.label} on {check.host} agrees with {check.reference} "
                              f"({check.figure_text()}; {check.check_seconds:.1f} s, once per machine"
                              f"{'' if check.entry else ', not cached: this runner has no cache folder'})")
        elif self.mode == "refuse":
            raise ValidationFailed(refusal(runner, check))
        elif self.mode == "record":
            compile_cache.say(f"self-check: {runner.label} FAILED on {check.host}: {check.figure_text()} against "
                              f"{check.reference} (recorded)")

    def _use_cached(self, runner, key: dict[str, Any] | None, start: float) -> bool:
        """Record what applies without computing (True when something did): nothing to check, or
        a cached verdict (a failure refuses in mode refuse)."""
        if key is None:
            runner.self_check = SelfCheck(runner.label, self.mode, "not run", reason=f"the {runner.label} runner "
                                          f"does not compute in {runner.precision} here (see its fallback)")
            return True
        check = self.cached(runner)
        if check is None:
            return False
        runner.self_check = replace(check, seconds=time.perf_counter() - start)
        if not check.passed and self.mode == "refuse":
            raise ValidationFailed(refusal(runner, check))
        return True


def host_label(host: dict[str, Any], precision: str) -> str:
    """'AMD EPYC (avx512_bf16)' or 'NVIDIA H200 (compute capability 9.0)': the machine in one phrase,
    with the CPU flags that decide how `precision` runs."""
    if host.get("gpu"):
        cc = host.get("compute_capability")
        return f"{host['gpu']} (compute capability {cc})" if cc else str(host["gpu"])
    relevant = RELEVANT_FLAGS.get(precision, ())
    flags = [f for f in relevant if f in host.get("cpu_flags", [])]
    shown = ", ".join(flags) if flags else f"no {'/'.join(relevant) or 'relevant'} flag"
    return f"{host.get('cpu') or 'this CPU'} ({shown})"


def compute(runner, plan: Plan) -> SelfCheck:
    """Run the check sample through `runner` (active) and its FP32 reference; store the verdict."""
    global COMPUTED
    from lga_export.contract import tolerance
    from lga_export.runtime.sample_runs import run_samples
    from lga_export.verify.comparator import compare_outputs

    start = time.perf_counter()
    try:
        reference = plan.make_reference()
    except LGAError as exc:
        return SelfCheck(runner.label, plan.mode, "not run", host=plan.host,
                         reason=f"its FP32 reference cannot be opened ({exc})")
    sample = plan.sample(runner)
    samples, batch = sample.samples, sample.key["batch"]
    tol = tolerance(runner.precision)
    with reference:
        ref = run_samples(reference, samples, batch)
    pair = compare_outputs(ref, run_samples(runner, samples, batch, ref), [s.name for s in samples], tol,
                           (reference.label, runner.label))
    COMPUTED += 1
    image, e2e, text = pair.image, pair.end_to_end, pair.text
    worsts = [p.dice_worst for p in (image, e2e) if p is not None and p.dice_worst is not None]
    figure = {"worst_agreement": min(worsts) if worsts else None, "gate": tol.min_dice,
              "nonfinite": e2e.nonfinite + text.nonfinite + (image.nonfinite if image else 0),
              "max_abs_logit_diff": image.max_abs_diff if image else e2e.max_abs_diff,
              "max_abs_text_diff": text.max_abs_diff,
              "reference_foreground": list(e2e.reference_foreground), "samples": [s.name for s in samples]}
    check = SelfCheck(runner.label, plan.mode, "passed" if pair.passed else "failed", passed=pair.passed,
                      host=plan.host, reference=reference.label, figure=figure, problems=list(pair.problems),
                      check_seconds=round(time.perf_counter() - start, 3), sample=sample.label)
    entry = store(plan, check, runner)
    return replace(check, seconds=time.perf_counter() - start, entry=str(entry) if entry else None)


def store(plan: Plan, check: SelfCheck, runner) -> Path | None:
    """Write the verdict as a sealed cache entry (staged, then renamed; a concurrent writer's wins)."""
    if plan.entry is None:
        return None
    root = plan.entry.parent
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{plan.entry.name}.", suffix=".partial", dir=root))
    except OSError:
        return None
    try:
        record = {**check.to_dict(), "model_digest": runner.model_digest,
                  "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        record.pop("ran")
        (staging / VERDICT).write_text(json.dumps(record, indent=1, sort_keys=True))
        compile_cache.seal(staging, plan.key)
        compile_cache.publish(staging, plan.entry)  # False: a concurrent writer's verdict is kept
        return plan.entry
    except OSError:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
        return None


def passing_elsewhere(runner, plan: Plan) -> list[str]:
    """Other precisions of this backend whose cached verdict for this model passed on this machine."""
    if plan.entry is None:
        return []
    found = []
    for entry in sorted(plan.entry.parent.glob(f"{PREFIX}{runner.backend}-*")):
        if entry == plan.entry or entry.name.startswith("."):
            continue
        try:
            record = json.loads((entry / compile_cache.RECORD).read_text())
            key = record["key"]
            if compile_cache.problem(entry, key) is not None:
                continue
            verdict = json.loads((entry / VERDICT).read_text())
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if (verdict.get("passed") and verdict.get("model_digest") == runner.model_digest
                and key.get("host") == plan.key.get("host") and key.get("runtime") == plan.key.get("runtime")):
            found.append(f"{runner.backend}-{key.get('precision')}")
    return sorted(set(found))


def refusal(runner, check: SelfCheck) -> str:
    """The one line a refused precision gets: the machine, the figure, a precision that passes."""
    plan = getattr(runner, "_self_check_plan", None)
    others = passing_elsewhere(runner, plan) if plan is not None else []
    passes = (f"{', '.join(others)} passed here, and fp32 (the reference) runs" if others else
              "fp32 (the reference it was checked against) runs")
    return (f"{runner.label} failed its self-check on {check.host}{' (cached verdict)' if check.cached else ''}: "
            f"{check.figure_text()} against {check.reference} on {check.sample or 'the built-in check sample'}; "
            f"{passes}: use "
            f"--precision fp32 (or --fallback-fp32 to fall back by itself, --no-self-check to skip the check)")


def fallback_line(check: SelfCheck) -> str:
    return (f"{check.label} failed its self-check on {check.host} ({check.figure_text()}), so FP32 runs "
            f"instead")


def attach(runner, mode: str, make_reference: Callable[[], Any]) -> None:
    """Give a runner opened at a self-checked precision its plan (`off`: recorded as skipped)."""
    if mode not in MODES:
        raise LGAError(f"unknown self-check mode {mode!r}; choose one of {', '.join(MODES)}")
    if runner.precision not in type(runner).self_checked:
        return
    if mode == "off":
        runner.self_check = SelfCheck(runner.label, mode, "skipped", reason="skipped with --no-self-check")
        return
    runner._self_check_plan = Plan(mode, make_reference)


def open_checked(runner, activate: bool):
    """The factory's last step: activate (running the check), and in fallback mode hand back the
    FP32 reference, saying so, when the reduced precision failed here."""
    plan: Plan | None = getattr(runner, "_self_check_plan", None)
    if plan is None or plan.mode != "fallback":
        return runner.activate() if activate else runner
    if not activate:  # the factory cannot swap the runner later: a failure refuses at activation
        plan.mode = "refuse"
        return runner
    plan.before(runner)  # a cached failure falls back before the reduced graphs are compiled
    if runner.self_check is None or runner.self_check.passed is not False:
        runner.activate()  # computes the verdict when none was cached
    check = runner.self_check
    if check is None or check.passed is not False:
        return runner
    runner.deactivate()
    line = fallback_line(check)
    compile_cache.say(f"warning: {line}")
    reference = plan.make_reference()
    reference.self_check = replace(check, fallback=line)
    reference.requested_precision = runner.precision
    return reference.activate()
