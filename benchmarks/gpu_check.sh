#!/usr/bin/env bash
# GPU check for lga-export: one saved checkpoint per preset (tiny, vit_b) drives every step -
# ONNX export (FP32 + FP16 graphs), TensorRT engines (FP32 and FP16) and lga-bench over
# torch, ort and trt against the PyTorch FP32 reference of that same checkpoint.
#
#   benchmarks/gpu_check.sh [--allow-missing] [--fresh] [--budget S] [--dry-run] OUTDIR
#
# BUDGET: 470 s in all by default (ends inside 8 minutes). Every step runs under `timeout`
# with its own cap, and the caps below sum to the budget (checked before anything runs); a
# step never gets more than what is left of the budget. --budget S scales every cap by
# S/470 (a first run that installs the venv and builds vit_b engines without a timing cache
# may need more: these caps are estimates, not measurements on a GPU machine).
#
#   setup 130 | probe 15 | checkpoints 30
#   export-tiny 30 | trt-tiny-fp32 20 | trt-tiny-fp16 20 | bench-tiny 25
#   export-vit_b 70 | trt-vit_b-fp32 45 | trt-vit_b-fp16 45 | bench-vit_b 40   = 470 s
#
# setup: the check's own virtual environment .venv-gpu (never the project's .venv), created
#   from scratch when absent, stale (pyproject.toml changed), half-built (an interrupted setup
#   leaves the ownership marker but no stamp) or with --fresh, installing INSTALL_SET below
#   (.[gpu-bench]: torch + export tooling, onnxruntime-gpu, TensorRT + Polygraphy, matplotlib)
#   with --extra-index-url https://pypi.nvidia.com (TensorRT's PyPI packages may be stubs that
#   fetch the real wheels from NVIDIA's index at install time). Should anything still pull in
#   the CPU `onnxruntime` wheel (no extra of gpu-bench lists it), it is uninstalled and
#   `onnxruntime-gpu` reinstalled over it: both ship the same `onnxruntime` import package, and
#   with both the CUDA provider can vanish. A reused environment is re-verified, not trusted.
#   GPU_CHECK_VENV moves it (the CI keeps it outside the checkout, which cleans ignored files).
# A requested backend that cannot run on this GPU machine (no TensorRT, no CUDA provider in
#   ONNX Runtime) is a FAILURE, and lga-bench runs with --require-all (a skipped case fails,
#   exit 3); with --allow-missing it is recorded as SKIPPED and left out of the benchmark.
#   No CUDA GPU at all always fails.
#
# OUTDIR, written as the check goes (summary.json and summary.md are rewritten after every
# step, so a check cut short still tells what happened):
#   summary.json   CI-gateable: {"passed": bool|null, "failed": [...], "steps": [...]}
#   summary.md     the same as a table, with the verdict
#   steps.tsv      one line per finished step
#   logs/<step>.log  each step's full output, as it is produced
#   environment.txt / environment.json   GPU, driver, versions, ONNX Runtime providers
#   checkpoints/<preset>.safetensors, onnx/<preset>/, engines/<preset>/, bench/<preset>/
# Exit code: 0 when every step passed, 1 otherwise (2: usage).
set -u -o pipefail

NVIDIA_INDEX="${NVIDIA_INDEX:-https://pypi.nvidia.com}"
INSTALL_SET=".[gpu-bench]"   # pyproject's gpu-bench extra; tests/test_gpu_ci.py resolves it
BUDGET=470
declare -A CAP=([setup]=130 [probe]=15 [checkpoints]=30
                [export-tiny]=30 [trt-tiny-fp32]=20 [trt-tiny-fp16]=20 [bench-tiny]=25
                [export-vit_b]=70 [trt-vit_b-fp32]=45 [trt-vit_b-fp16]=45 [bench-vit_b]=40
                [ort-gpu]=0)  # ort-gpu: a verdict recorded by the probe, not a step of its own
ORDER=(setup probe checkpoints export-tiny trt-tiny-fp32 trt-tiny-fp16 bench-tiny
       export-vit_b trt-vit_b-fp32 trt-vit_b-fp16 bench-vit_b)
PRESETS=(tiny vit_b)
BATCHES="${BENCH_BATCHES:-1,2}"   # engines are built for exactly this range (max batch = the largest)
SAMPLES="${BENCH_SAMPLES:-8}"

USAGE="usage: $0 [--allow-missing] [--fresh] [--budget S] [--dry-run] OUTDIR"
ALLOW_MISSING=0; FRESH=0; DRY_RUN=0; OUTARG=""; WANT_BUDGET=$BUDGET
while [[ $# -gt 0 ]]; do
    case "$1" in
        --allow-missing) ALLOW_MISSING=1 ;;
        --fresh) FRESH=1 ;;
        --dry-run) DRY_RUN=1 ;;
        --budget) shift; WANT_BUDGET="${1:-}" ;;
        -h|--help) sed -n '2,45p' "$0"; exit 0 ;;
        -*) echo "unknown option $1; $USAGE" >&2; exit 2 ;;
        *) [[ -n $OUTARG ]] && { echo "$USAGE" >&2; exit 2; }
           OUTARG="$1" ;;
    esac
    shift
done
if [[ -z $OUTARG ]]; then
    echo "$USAGE" >&2
    exit 2
fi
if ! [[ $WANT_BUDGET =~ ^[0-9]+$ ]] || (( WANT_BUDGET < 60 )); then
    echo "--budget takes whole seconds, at least 60; $USAGE" >&2
    exit 2
fi
if (( WANT_BUDGET != BUDGET )); then  # scale every cap; flooring keeps the sum inside the budget
    for step in "${!CAP[@]}"; do CAP[$step]=$(( CAP[$step] * WANT_BUDGET / BUDGET )); done
    BUDGET=$WANT_BUDGET
fi

total=0
for step in "${ORDER[@]}"; do total=$((total + CAP[$step])); done
if (( total > BUDGET )); then
    echo "gpu_check: the step caps sum to ${total} s, over the ${BUDGET} s budget" >&2
    exit 2
fi

REPO="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${GPU_CHECK_VENV:-$REPO/.venv-gpu}"
PY="$VENV/bin/python"
MAX_BATCH="${BATCHES##*,}"

if [[ $DRY_RUN -eq 1 ]]; then
    echo "budget ${BUDGET} s; step caps sum to ${total} s"
    for step in "${ORDER[@]}"; do printf '  %-16s %4s s\n' "$step" "${CAP[$step]}"; done
    echo "venv: $VENV (pip install -e \"$INSTALL_SET\" --extra-index-url $NVIDIA_INDEX; never the CPU onnxruntime)"
    echo "bench: --batch $BATCHES --samples $SAMPLES; engines --max-batch $MAX_BATCH;" \
         "$([[ $ALLOW_MISSING -eq 1 ]] && echo 'missing backends skipped' || echo '--require-all')"
    exit 0
fi

mkdir -p "$OUTARG"
OUT="$(cd "$OUTARG" && pwd)"
mkdir -p "$OUT/logs" "$OUT/checkpoints"
STEPS="$OUT/steps.tsv"
printf 'step\tstatus\texit_code\tseconds\tcap_s\treason\n' > "$STEPS"
START=$(date +%s)
DEADLINE=$((START + BUDGET))
FAILED_STEPS=()
cd "$REPO"

note() { echo "[gpu_check $(( $(date +%s) - START ))s] $*" | tee -a "$OUT/logs/gpu_check.log"; }

# summary [final]: summary.json + summary.md from steps.tsv (system python3: the venv may not exist yet).
summary() {
    python3 - "$OUT" "$BUDGET" "$START" "$ALLOW_MISSING" "${1:-}" "${ORDER[*]}" <<'PYEOF' || note "could not write the summary"
import datetime, json, sys, time
from pathlib import Path

out, budget, start, allow_missing, final, order = sys.argv[1:7]
out = Path(out)
rows = [line.split("\t") for line in (out / "steps.tsv").read_text().splitlines()[1:] if line.strip()]
steps = [{"name": r[0], "status": r[1], "exit_code": None if r[2] == "-" else int(r[2]), "seconds": int(r[3]),
          "cap_s": int(r[4]), "reason": r[5] if len(r) > 5 else "", "log": f"logs/{r[0]}.log"} for r in rows]
bad = ("FAILED", "TIMEOUT", "MISSING")
failed = [s["name"] for s in steps if s["status"] in bad]
done = {s["name"] for s in steps}
pending = [name for name in order.split() if name not in done]
passed = (not failed and not pending) if final else (False if failed else None)
summary = {"check": "lga-export gpu_check", "budget_s": int(budget), "allow_missing": allow_missing == "1",
           "started": datetime.datetime.fromtimestamp(int(start), datetime.timezone.utc).isoformat(timespec="seconds"),
           "elapsed_s": int(time.time()) - int(start), "complete": bool(final), "passed": passed,
           "failed": failed, "pending": pending, "steps": steps}
tmp = out / ".summary.json.partial"
tmp.write_text(json.dumps(summary, indent=2) + "\n")
tmp.replace(out / "summary.json")
verdict = {True: "PASSED", False: "FAILED", None: "RUNNING"}[passed]
lines = ["# lga-export GPU check", "",
         f"**{verdict}**" + (f" - failed: {', '.join(failed)}" if failed else "")
         + (f" - not run: {', '.join(pending)}" if final and pending else ""), "",
         f"Budget {budget} s, {summary['elapsed_s']} s used. Missing backends "
         f"{'allowed (--allow-missing)' if allow_missing == '1' else 'are failures'}. "
         "Environment: environment.txt; logs: logs/<step>.log.", "",
         "| step | status | exit code | seconds | cap s | reason |", "| --- | --- | ---: | ---: | ---: | --- |"]
lines += [f"| {s['name']} | {s['status']} | {'-' if s['exit_code'] is None else s['exit_code']} | {s['seconds']} | "
          f"{s['cap_s']} | {s['reason'].replace('|', '/')} |" for s in steps]
lines += [f"| {name} | pending | - | - | - | |" for name in pending]
for md in sorted(out.glob("engines/*/*.layers.md")):
    table = [l for l in md.read_text().splitlines() if l.startswith("| ")][:8]
    lines += ["", f"## {md.parent.name}: {md.name[:-len('.layers.md')]} layer precisions", "", *table]
for report in sorted(out.glob("bench/*/report.md")):
    lines += ["", f"Benchmark report: {report.relative_to(out)}"]
tmp = out / ".summary.md.partial"
tmp.write_text("\n".join(lines) + "\n")
tmp.replace(out / "summary.md")
PYEOF
}

record() {  # record NAME STATUS EXIT SECONDS REASON
    local reason="${5//$'\t'/ }"
    reason="${reason//$'\n'/ }"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${CAP[$1]}" "${reason:0:300}" >> "$STEPS"
    case "$2" in FAILED|TIMEOUT|MISSING) FAILED_STEPS+=("$1") ;; esac
    note "$1: $2${5:+ - $5}"
    summary
}

# run_step NAME CMD...: under `timeout` (its cap, or what is left of the budget), output to logs/NAME.log.
run_step() {
    local name="$1"; shift
    local left limit t0 rc status reason=""
    left=$((DEADLINE - $(date +%s)))
    if (( left < 5 )); then
        record "$name" TIMEOUT - 0 "the ${BUDGET} s budget is spent"
        return 1
    fi
    limit=$(( CAP[$name] < left ? CAP[$name] : left ))
    note "$name: running (cap ${limit} s)"
    t0=$(date +%s)
    { echo "\$ $*"; } > "$OUT/logs/$name.log"
    timeout --kill-after=5 "$limit" "$@" >> "$OUT/logs/$name.log" 2>&1
    rc=$?
    case $rc in
        0) status=OK ;;
        124|137) status=TIMEOUT; reason="killed after ${limit} s" ;;
        *) status=FAILED; reason="$(grep -v '^\s*$' "$OUT/logs/$name.log" | tail -n 1 | cut -c1-250)" ;;
    esac
    record "$name" "$status" "$rc" "$(( $(date +%s) - t0 ))" "$reason"
    [[ $rc -eq 0 ]]
}

skip() {  # skip NAME REASON: a dependent step not run because an earlier one failed
    record "$1" SKIPPED - 0 "$2"
}

missing() {  # missing NAME REASON: a requested backend cannot run here
    if [[ $ALLOW_MISSING -eq 1 ]]; then
        record "$1" SKIPPED - 0 "allowed by --allow-missing: $2"
    else
        record "$1" MISSING - 0 "$2 (pass --allow-missing to accept that)"
    fi
}

finish() {
    summary final
    local verdict=PASSED
    [[ ${#FAILED_STEPS[@]} -gt 0 ]] && verdict=FAILED
    note "GPU CHECK: $verdict${FAILED_STEPS[*]:+ (failed: ${FAILED_STEPS[*]})} - $OUT/summary.json"
    [[ $verdict == PASSED ]] && exit 0 || exit 1
}

# ---------------------------------------------------------------- 1. setup: the check's own venv
STAMP="$VENV/.gpu-check-stamp"
OWNER="$VENV/.gpu-check-owner"   # written right after `python3 -m venv`: the venv is ours, stamped or not
WANT_STAMP="$(cat pyproject.toml "$0" | sha256sum | cut -c1-16) $(python3 -c 'import sys; print(sys.version.split()[0])' 2>/dev/null)"
SETUP_SCRIPT='
set -eu -o pipefail
if [[ -e "$VENV" && ! -f "$STAMP" && ! -f "$OWNER" ]]; then
    echo "$VENV exists but was not made by gpu_check.sh (no stamp, no owner marker); refusing to replace it - remove it or set GPU_CHECK_VENV" >&2
    exit 1
fi
if [[ $FRESH -eq 1 || ! -f "$STAMP" || ! -x "$VENV/bin/python" || "$(cat "$STAMP" 2>/dev/null)" != "$WANT_STAMP" ]]; then
    echo "creating $VENV from scratch"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    touch "$OWNER"
    "$VENV/bin/pip" install --quiet --upgrade pip
    "$VENV/bin/pip" install --quiet --extra-index-url "$NVIDIA_INDEX" -e "$INSTALL_SET"
    if "$VENV/bin/pip" show onnxruntime > /dev/null 2>&1; then
        # Both wheels own the `onnxruntime` import package: drop the CPU one, then restore the
        # GPU one over the files that uninstall removed.
        ORT_GPU="$("$VENV/bin/pip" show onnxruntime-gpu | sed -n "s/^Version: //p")"
        "$VENV/bin/pip" uninstall --yes onnxruntime
        "$VENV/bin/pip" install --quiet --force-reinstall --no-deps "onnxruntime-gpu==$ORT_GPU"
    fi
    echo "$WANT_STAMP" > "$STAMP"
else
    echo "reusing $VENV (stamp matches); re-verifying it"
fi
if "$VENV/bin/pip" show onnxruntime > /dev/null 2>&1; then
    echo "the CPU onnxruntime wheel is installed beside onnxruntime-gpu; rerun with --fresh" >&2
    exit 1
fi
"$VENV/bin/pip" show onnxruntime-gpu | head -n 2
"$VENV/bin/python" -c "import lga_export, onnxruntime; print(\"lga_export\", lga_export.__version__, \"onnxruntime\", onnxruntime.__version__)"
'
if ! run_step setup env FRESH="$FRESH" VENV="$VENV" STAMP="$STAMP" OWNER="$OWNER" WANT_STAMP="$WANT_STAMP" \
        NVIDIA_INDEX="$NVIDIA_INDEX" INSTALL_SET="$INSTALL_SET" bash -c "$SETUP_SCRIPT"; then
    for step in "${ORDER[@]:1}"; do skip "$step" "setup failed"; done
    finish
fi
BIN="$VENV/bin"

# ---------------------------------------------------------------- 2. probe: GPU and backends
# benchmarks/gpu_probe.py imports every module a later step needs (a missing one fails here, by
# name) and records the GPU, the versions and whether the CUDA provider really loads.
run_step probe "$PY" benchmarks/gpu_probe.py "$OUT"
probe_rc=$?
if [[ $probe_rc -ne 0 ]]; then
    probe_reason="$(grep -v '^\s*$' "$OUT/logs/probe.log" | tail -n 1 | cut -c1-200)"
    for step in "${ORDER[@]:2}"; do skip "$step" "probe failed: $probe_reason"; done
    finish
fi
env_get() { "$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$OUT/environment.json" "$1"; }
TRT_OK=$([[ $(env_get trt_ok) == True ]] && echo 1 || echo 0)
ORT_OK=$([[ $(env_get ort_gpu_ok) == True ]] && echo 1 || echo 0)
BACKENDS="torch"
if [[ $ORT_OK -eq 1 ]]; then BACKENDS+=",ort"; fi
if [[ $TRT_OK -eq 1 ]]; then BACKENDS+=",trt"; fi
if [[ $ORT_OK -ne 1 ]]; then
    missing ort-gpu "ONNX Runtime cannot run on the GPU here: $(env_get ort_gpu_problem)"
fi

# ---------------------------------------------------------------- 3. one checkpoint per preset
# tiny: the trained default model shipped in the repository (masks worth comparing); vit_b:
# random SAM weights from seed 0. Every later step reads these files, never a fresh model.
run_step checkpoints "$PY" - "$OUT/checkpoints" <<'PYEOF'
import shutil, sys
from pathlib import Path

import torch

from lga_export.build import build_lga
from lga_export.checkpoint import model_digest, save_lga_checkpoint
from lga_export.config import get_preset
from lga_export.loading import default_checkpoint, load_model

out = Path(sys.argv[1])
shipped = default_checkpoint()
if shipped is not None:
    shutil.copyfile(shipped, out / "tiny.safetensors")
else:
    torch.manual_seed(0)
    save_lga_checkpoint(build_lga(get_preset("tiny")), out / "tiny.safetensors", force=True)
torch.manual_seed(0)
save_lga_checkpoint(build_lga(get_preset("vit_b")), out / "vit_b.safetensors", force=True)
for preset in ("tiny", "vit_b"):
    print(preset, model_digest(load_model(checkpoint=out / f"{preset}.safetensors")))
PYEOF
ckpt_rc=$?

# ---------------------------------------------------------------- 4-6. per preset: export, engines, bench
for preset in "${PRESETS[@]}"; do
    ckpt="$OUT/checkpoints/$preset.safetensors"
    onnx_dir="$OUT/onnx/$preset"
    engines="$OUT/engines/$preset"
    export_ok=0
    if [[ $ckpt_rc -ne 0 ]]; then
        skip "export-$preset" "no checkpoint (the checkpoints step failed)"
    elif run_step "export-$preset" "$BIN/lga-export" onnx --checkpoint "$ckpt" --fp16 --no-validate \
            --out "$onnx_dir" --force; then
        export_ok=1
    fi
    engines_ok=1
    for precision in fp32 fp16; do
        step="trt-$preset-$precision"
        flag=(); [[ $precision == fp16 ]] && flag=(--fp16)
        if [[ $TRT_OK -ne 1 ]]; then
            missing "$step" "TensorRT is not usable here (tensorrt: $(env_get tensorrt))"
            engines_ok=0
        elif [[ $export_ok -ne 1 ]]; then
            skip "$step" "export-$preset failed"
            engines_ok=0
        else
            run_step "$step" "$BIN/lga-export" trt --onnx "$onnx_dir" "${flag[@]}" --min-batch 1 \
                --max-batch "$MAX_BATCH" --timing-cache "$OUT/engines/timing.cache" --out "$engines" --force \
                || engines_ok=0
        fi
    done
    if [[ $export_ok -ne 1 ]]; then
        skip "bench-$preset" "export-$preset failed"
        continue
    fi
    backends="$BACKENDS"
    bench_args=()
    if [[ $ALLOW_MISSING -eq 1 ]]; then
        [[ $engines_ok -ne 1 ]] && backends="${backends/,trt/}"
    else
        backends="torch,ort,trt"  # everything requested: a case that cannot run fails the bench
        bench_args+=(--require-all)
    fi
    [[ $backends == *trt* ]] && bench_args+=(--engines "$engines")
    [[ -n ${MIN_DICE:-} ]] && bench_args+=(--min-dice-agreement "$MIN_DICE")
    [[ -n ${MAX_LATENCY_RATIO:-} ]] && bench_args+=(--max-latency-ratio "$MAX_LATENCY_RATIO")
    run_step "bench-$preset" "$BIN/lga-bench" --checkpoint "$ckpt" --onnx "$onnx_dir" --backends "$backends" \
        --precision fp32,fp16 --batch "$BATCHES" --samples "$SAMPLES" --warmup 3 --iters 20 \
        --out "$OUT/bench/$preset" --force "${bench_args[@]}"
done

finish
