#!/usr/bin/env bash
# Device-ready check of the LGA image graph on a bare GPU machine (PyTorch + CUDA preinstalled,
# no internet, no TensorRT, no onnxruntime-gpu), from a bundle made beforehand on a CPU machine:
#
#   python benchmarks/device_check.py prepare runs/device_bundle     # CPU machine, once (< 48 MiB)
#   benchmarks/device_check.sh OUTDIR [BUNDLE] [RUN FLAGS...]       # GPU machine
#
# BUNDLE defaults to runs/device_bundle (ignored by git; carry it to the device). The check ends
# inside 8 minutes: the whole run is capped at RUN_CAP_S (default 450 s) by `timeout`, and each
# torch.compile attempt inside it at COMPILE_CAP_S (default 150 s; skipped with the reason when
# it fails or runs out of time). OUTDIR gets results.json and report.md (written after every
# preset, so a run cut short still reports what it measured), run.log and gpu.txt.
# Exit code: device_check.py's (0 passed, 1 a variant failed or missed the spec's tolerance,
# 2 bundle/setup problem), 124 when the run cap was hit.
set -u -o pipefail

if [[ $# -lt 1 || $1 == -* ]]; then
    echo "usage: $0 OUTDIR [BUNDLE] [device_check.py run flags, e.g. --presets tiny --iters 50]" >&2
    exit 2
fi
REPO="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$1"
OUT="$(cd "$1" && pwd)"
shift
BUNDLE="$REPO/runs/device_bundle"
if [[ $# -gt 0 && $1 != -* ]]; then
    BUNDLE="$(cd "$1" && pwd)"
    shift
fi
RUN_CAP_S="${RUN_CAP_S:-450}"
COMPILE_CAP_S="${COMPILE_CAP_S:-150}"
PYTHON="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1

if [[ ! -f "$BUNDLE/bundle.json" ]]; then
    echo "device_check: no bundle at $BUNDLE; make it on the CPU machine with:" >&2
    echo "  python benchmarks/device_check.py prepare $BUNDLE" >&2
    exit 2
fi

{
    echo "date: $(date -u +%FT%TZ)"
    if command -v nvidia-smi > /dev/null; then
        timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,compute_cap,clocks.sm,clocks.max.sm \
            --format=csv 2>&1
    else
        echo "nvidia-smi: not available"
    fi
} > "$OUT/gpu.txt"

cd "$REPO"
timeout --kill-after=15 "$RUN_CAP_S" "$PYTHON" benchmarks/device_check.py run "$BUNDLE" "$OUT" \
    --compile-timeout "$COMPILE_CAP_S" "$@" 2>&1 | tee "$OUT/run.log"
rc=${PIPESTATUS[0]}
if [[ $rc -eq 124 || $rc -eq 137 ]]; then
    echo "device_check: the run hit its ${RUN_CAP_S} s cap; results.json holds what was measured before" \
        | tee -a "$OUT/run.log"
fi
exit "$rc"
