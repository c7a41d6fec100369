#!/usr/bin/env bash
# GPU check for lga-export: export tiny and vit_b (FP32 + FP16), build TensorRT engines when
# TensorRT is importable, and benchmark every backend against PyTorch with lga-bench.
#
#   benchmarks/gpu_check.sh OUTDIR
#
# Everything lands under OUTDIR: logs/<step>.log, steps.tsv (step, exit code, seconds, status),
# environment.txt, onnx/<preset>, engines/<preset>, bench/<preset>, SUMMARY.md.
# Each step runs under `timeout`, the whole check under a deadline (CHECK_BUDGET_S, default
# 470 s, so it ends inside 8 minutes); a failed step is recorded and the script goes on.
set -u -o pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
REPO="$(cd "$(dirname "$0")/.." && pwd)"
OUT="$(mkdir -p "$1" && cd "$1" && pwd)"
VENV="${VENV:-$REPO/.venv}"
BUDGET="${CHECK_BUDGET_S:-470}"
START=$(date +%s)
DEADLINE=$((START + BUDGET))
mkdir -p "$OUT/logs"
STEPS="$OUT/steps.tsv"
printf 'step\texit_code\tseconds\tstatus\n' > "$STEPS"
cd "$REPO"

note() { echo "[gpu_check] $*" | tee -a "$OUT/logs/gpu_check.log"; }

# run_step NAME BUDGET_S CMD...: run under `timeout` (capped by the global deadline), log, record.
run_step() {
    local name="$1" budget="$2"; shift 2
    local now left limit t0 rc status
    now=$(date +%s); left=$((DEADLINE - now))
    if (( left < 10 )); then
        printf '%s\t-\t0\tSKIPPED (out of time)\n' "$name" >> "$STEPS"
        note "$name: skipped, the ${BUDGET} s budget is spent"
        return 1
    fi
    limit=$(( budget < left ? budget : left ))
    note "$name: running (timeout ${limit} s): $*"
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" > "$OUT/logs/$name.log" 2>&1
    rc=$?
    case $rc in
        0) status="OK" ;;
        124|137) status="TIMEOUT after ${limit} s" ;;
        *) status="FAILED" ;;
    esac
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" "$status" >> "$STEPS"
    note "$name: $status (exit $rc, log: logs/$name.log)"
    [[ $rc -eq 0 ]]
}

skip_step() {
    printf '%s\t-\t0\tSKIPPED (%s)\n' "$1" "$2" >> "$STEPS"
    note "$1: SKIPPED - $2"
}

# 1. Environment: use the venv, create it when missing (the TensorRT extra is optional).
if [[ ! -x "$VENV/bin/lga-export" ]]; then
    run_step create-env 240 bash -c "python3 -m venv '$VENV' && '$VENV/bin/pip' install -q -e '.[dev,gpu]'" || true
    run_step install-tensorrt 120 "$VENV/bin/pip" install -q -e ".[tensorrt]" || true
fi
PY="$VENV/bin/python"
BIN="$VENV/bin"
{
    echo "date: $(date -u +%FT%TZ)"
    echo "commit: $(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)"
    if command -v nvidia-smi > /dev/null; then nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>&1; else echo "nvidia-smi: not available"; fi
    "$PY" - <<'PYEOF' 2>&1
import importlib, platform
print("python", platform.python_version())
for name in ("torch", "onnxruntime", "tensorrt", "polygraphy", "lga_export"):
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", "?"))
    except Exception as exc:
        print(name, "NOT AVAILABLE:", exc)
try:
    import torch
    print("cuda available", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
except Exception as exc:
    print("torch cuda check failed:", exc)
try:
    import onnxruntime
    print("onnxruntime providers", onnxruntime.get_available_providers())
except Exception:
    pass
PYEOF
} > "$OUT/environment.txt"
note "environment written to environment.txt"

TRT_OK=0
if ! TRT_REASON=$("$PY" -c "import tensorrt" 2>&1 | tail -n 1); then
    :  # TRT_REASON holds the import error
elif ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" > /dev/null 2>&1; then
    TRT_REASON="no CUDA GPU visible to torch"
else
    TRT_OK=1
fi
if [[ $TRT_OK -eq 1 ]]; then
    note "TensorRT $("$PY" -c 'import tensorrt; print(tensorrt.__version__)') found: engines will be built"
    BACKENDS="torch,torch-compile,ort,trt"
else
    note "TensorRT ENGINES SKIPPED: TensorRT is not usable here ($TRT_REASON); install with pip install \"lga-export[tensorrt]\""
    BACKENDS="torch,torch-compile,ort"
fi

# 2-4. Per preset: export FP32 + FP16, engines of both precisions, benchmark.
for preset in tiny vit_b; do
    if [[ $preset == tiny ]]; then export_s=90; build_s=90; bench_s=90; else export_s=150; build_s=150; bench_s=150; fi
    onnx_dir="$OUT/onnx/$preset"
    engines="$OUT/engines/$preset"
    if ! run_step "export-$preset" "$export_s" "$BIN/lga-export" onnx --preset "$preset" --fp16 --out "$onnx_dir" --force; then
        skip_step "trt-$preset" "export failed"
        skip_step "bench-$preset" "export failed"
        continue
    fi
    engine_args=()
    if [[ $TRT_OK -eq 1 ]]; then
        ok=1
        for precision in fp32 fp16; do
            flag=(); [[ $precision == fp16 ]] && flag=(--fp16)
            run_step "trt-$preset-$precision" "$build_s" "$BIN/lga-export" trt --onnx "$onnx_dir" "${flag[@]}" \
                --min-batch 1 --opt-batch 1 --max-batch 4 --timing-cache "$OUT/engines/timing.cache" \
                --out "$engines" --force || ok=0
        done
        [[ $ok -eq 1 || -n "$(ls "$engines"/*.engine 2>/dev/null)" ]] && engine_args=(--engines "$engines")
    else
        skip_step "trt-$preset" "TensorRT not usable: $TRT_REASON"
    fi
    backends="$BACKENDS"
    [[ ${#engine_args[@]} -eq 0 ]] && backends="${BACKENDS/,trt/}"
    run_step "bench-$preset" "$bench_s" "$BIN/lga-bench" --preset "$preset" --onnx "$onnx_dir" "${engine_args[@]}" \
        --backends "$backends" --precision fp32,fp16 --batch 1,2,4 --out "$OUT/bench/$preset" || true
done

# 5. Summary.
{
    echo "# lga-export GPU check"
    echo
    echo "Run $(date -u +%FT%TZ) in $(( $(date +%s) - START )) s; environment in environment.txt."
    echo
    if [[ $TRT_OK -eq 1 ]]; then
        echo "TensorRT engines: built (see engines/<preset>/*.manifest.json and *.layers.md)."
    else
        echo "**TensorRT engines: SKIPPED** - TensorRT is not usable here ($TRT_REASON)."
        echo "Install it with \`pip install \"lga-export[tensorrt]\"\` on a machine with a CUDA GPU."
    fi
    echo
    echo "| step | exit code | seconds | status |"
    echo "| --- | --- | ---: | --- |"
    tail -n +2 "$STEPS" | awk -F'\t' '{printf "| %s | %s | %s | %s |\n", $1, $2, $3, $4}'
    for md in "$OUT"/engines/*/*.layers.md; do
        [[ -f $md ]] || continue
        echo; echo "## $(basename "$md" .layers.md) layer precisions"; echo
        grep '^| ' "$md" | head -n 8
    done
} > "$OUT/SUMMARY.md"
note "summary: $OUT/SUMMARY.md"
failed=$(tail -n +2 "$STEPS" | awk -F'\t' '$4 !~ /^OK/ && $4 !~ /^SKIPPED \(TensorRT/' | wc -l)
note "$failed step(s) failed, timed out or were skipped for another reason"
exit $(( failed > 0 ? 1 : 0 ))
