#!/usr/bin/env bash
# The dated CPU record of every CPU backend and precision (issue #12), batch 1, on an idle machine:
#
#   benchmarks/cpu_record.sh OUTDIR [PRESET]        # PRESET: vit_b (default, the paper's), tiny, ...
#
#   1. checkpoint: an LGA model of PRESET with random SAM weights from a fixed seed (SEED, default 0;
#      the bundled MiniLM text backbone), saved with save_lga_checkpoint  -> OUTDIR/checkpoint/
#   2. export, once: lga-export onnx --fp16 --int8 $INT8 --validation-batch 2 (INT8 calibrated
#      on QaTa Train images for static|ov, validated on Val)                -> OUTDIR/onnx/
#   3. lga-bench on real QaTa Val images: torch fp32/bf16, ort fp32/fp16(/int8), ov fp32/bf16(/int8), batch 1
#      (the export's INT8 graph runs on ort for dynamic|static, on ov for ov)
#                                                                           -> OUTDIR/bench/
#   4. OUTDIR/README.md: date, commit, machine, load averages, commands, the report's headline.
#
# vit_b needs ~10 GB of RAM and ~6 min for the export, ~10 min for the bench on 2 cores. The
# figures mean something only on an idle machine: the script waits up to IDLE_WAIT_S (default
# 300) for the 1-minute load average to fall below IDLE_LOAD (default 0.5) before the bench,
# and refuses to go on when it does not, unless ALLOW_BUSY=1 (the load is recorded either way).
#
# Environment: PYTHON (default .venv/bin/python, else python3), DATA (data root with
# qata-cov19/; default ../shared/data), SEED, SAMPLES (default 4), WARMUP (1), ITERS (5),
# THREADS (default: all cores), CALIBRATION (static INT8 calibration images, default 64), INT8
# (static, dynamic, ov, or none for no INT8 graph; default ov), CHECKPOINT (a trained LGA
# checkpoint instead of step 1's random one, e.g. an embedded model), BATCH (comma list, default 1),
# PRECISIONS (default fp32,fp16,bf16,int8), BACKENDS (default torch,ort,ov).
# Exit code: lga-bench's (0 passed, 3 a gate failed - the report is still written), 1 when a step
# before it failed, 2 on usage, 4 when the machine stayed busy.
set -euo pipefail

if [[ $# -lt 1 || $1 == -* ]]; then
    echo "usage: $0 OUTDIR [PRESET]   (PRESET default vit_b; env SEED, DATA, SAMPLES, ITERS, ALLOW_BUSY)" >&2
    exit 2
fi
REPO="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$1"
OUT="$(cd "$1" && pwd)"
PRESET="${2:-${PRESET:-vit_b}}"
SEED="${SEED:-0}"
DATA="${DATA:-$REPO/../shared/data}"
SAMPLES="${SAMPLES:-4}"
WARMUP="${WARMUP:-1}"
ITERS="${ITERS:-5}"
THREADS="${THREADS:-$(nproc)}"
CALIBRATION="${CALIBRATION:-64}"
# INT8 method of the export: static (calibrated) or dynamic. Static calibration of vit_b at
# 1024 px needed more than 24 GB in ONNX Runtime 1.32 (killed by the OOM killer on the 24 GB
# machine, 2026-11-29); INT8=ov (NNCF, OpenVINO IR) calibrates vit_b in about 7 GB.
INT8="${INT8:-ov}"
IDLE_LOAD="${IDLE_LOAD:-0.5}"
IDLE_WAIT_S="${IDLE_WAIT_S:-300}"
if [[ -z "${PYTHON:-}" ]]; then
    PYTHON="$REPO/.venv/bin/python"
    [[ -x $PYTHON ]] || PYTHON=python3
fi
export PYTHONUNBUFFERED=1
cd "$REPO"

if [[ ! -d $DATA/qata-cov19/Val_Folder || ! -d $DATA/qata-cov19/Train_Folder ]]; then
    echo "cpu_record: no QaTa-COV19 Train_Folder and Val_Folder under $DATA; set DATA to the data root" >&2
    exit 2
fi
DATA="$(cd "$DATA" && pwd)"
STARTED="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
CKPT="${CHECKPOINT:-$OUT/checkpoint/lga_${PRESET}_random_seed${SEED}.safetensors}"
BATCH="${BATCH:-1}"
PRECISIONS="${PRECISIONS:-fp32,fp16,bf16,int8}"
BACKENDS="${BACKENDS:-torch,ort,ov}"
log() { echo "[cpu_record $(date -u +%H:%M:%S)] $*" | tee -a "$OUT/record.log"; }
load1() { cut -d' ' -f1 /proc/loadavg; }

log "preset $PRESET, seed $SEED, data $DATA, out $OUT, python $PYTHON, load $(cut -d' ' -f1-3 /proc/loadavg)"

# 1. checkpoint (random SAM weights from SEED) unless CHECKPOINT names a trained one
if [[ -n ${CHECKPOINT:-} ]]; then
    [[ -f $CHECKPOINT ]] || { echo "cpu_record: CHECKPOINT $CHECKPOINT is not a file" >&2; exit 2; }
    log "checkpoint $CHECKPOINT (given)"
else
mkdir -p "$OUT/checkpoint"
"$PYTHON" - "$PRESET" "$SEED" "$CKPT" <<'EOF' 2>&1 | tee -a "$OUT/record.log"
import sys

import torch

from lga_export.build import build_lga
from lga_export.checkpoint import model_digest, save_lga_checkpoint
from lga_export.config import get_preset

preset, seed, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
torch.manual_seed(seed)
model = build_lga(get_preset(preset))
save_lga_checkpoint(model, path, force=True, metadata={"note": f"random SAM weights, torch.manual_seed({seed})"})
print(f"checkpoint {path}: {preset}, model digest {model_digest(model)[:16]}")
EOF
fi

# 2. export once: FP32, FP16 and static INT8 (calibrated on Train), validated on Val at batch 2
INT8_ARGS=(--int8 "$INT8" --calibration-samples "$CALIBRATION")
[[ $INT8 == none ]] && INT8_ARGS=()
EXPORT_CMD=(lga-export onnx --checkpoint "$CKPT" --out "$OUT/onnx" --fp16 "${INT8_ARGS[@]}"
            --validation-batch 2 --data "$DATA" --force)
log "${EXPORT_CMD[*]}"
start=$(date +%s)
"$PYTHON" -c "from lga_export.cli.main import app; app()" "${EXPORT_CMD[@]:1}" 2>&1 | tee -a "$OUT/record.log"
log "export took $(( $(date +%s) - start )) s"

# 3. wait for an idle machine, then the bench
waited=0
while awk -v l="$(load1)" -v m="$IDLE_LOAD" 'BEGIN{exit !(l > m)}' && (( waited < IDLE_WAIT_S )); do
    sleep 15
    waited=$(( waited + 15 ))
done
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
if awk -v l="$(load1)" -v m="$IDLE_LOAD" 'BEGIN{exit !(l > m)}'; then
    if [[ ${ALLOW_BUSY:-0} != 1 ]]; then
        log "the machine is busy (load $LOAD_BEFORE > $IDLE_LOAD after ${waited} s); no bench. ALLOW_BUSY=1 runs it anyway"
        exit 4
    fi
    log "busy machine (load $LOAD_BEFORE), going on because ALLOW_BUSY=1: compare ratios, not absolute times"
fi
BENCH_CMD=(lga-bench --checkpoint "$CKPT" --onnx "$OUT/onnx" --backends "$BACKENDS"
           --precision "$PRECISIONS" --exclude torch-fp16 --batch "$BATCH" --samples "$SAMPLES"
           --warmup "$WARMUP" --iters "$ITERS" --threads "$THREADS" --data "$DATA" --out "$OUT/bench" --force)
log "${BENCH_CMD[*]} (load before: $LOAD_BEFORE)"
set +e
"$PYTHON" -c "from lga_export.cli.bench import app; app()" "${BENCH_CMD[@]:1}" 2>&1 | tee -a "$OUT/record.log"
status=${PIPESTATUS[0]}
set -e
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"
log "lga-bench exit $status, load after: $LOAD_AFTER"
[[ -f $OUT/bench/report.md ]] || exit 1

# 4. the dated README of the record
{
    echo "# $PRESET CPU record, backends $BACKENDS, precisions $PRECISIONS, batch $BATCH ($STARTED)"
    echo
    echo "Commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$REPO" diff --quiet 2>/dev/null || echo ' (with local changes)');" \
         "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) logical cores, threads $THREADS."
    echo "CPU flags that matter here: $(grep -o -w -E 'amx_bf16|amx_int8|amx_tile|avx512_bf16|avx512_vnni|avx512f|avx2' /proc/cpuinfo | sort -u | tr '\n' ' ')"
    echo "Load average (1/5/15 min) before the bench: $LOAD_BEFORE; after: $LOAD_AFTER."
    if [[ -n ${CHECKPOINT:-} ]]; then
        echo "Checkpoint $(basename "$CKPT"); QaTa-COV19 Val images for parity and"
    else
        echo "Random SAM weights from torch.manual_seed($SEED), bundled MiniLM; QaTa-COV19 Val images for parity and"
    fi
    case $INT8 in
        static) int8_text="ONNX Runtime static INT8 calibrated on $CALIBRATION QaTa Train images" ;;
        ov) int8_text="OpenVINO INT8 (NNCF) calibrated on $CALIBRATION QaTa Train images" ;;
        none) int8_text="no INT8 graph" ;;
        *) int8_text="INT8 by ONNX Runtime dynamic quantisation" ;;
    esac
    echo "latency; $int8_text. Made by \`benchmarks/cpu_record.sh\`:"
    echo
    echo "    ${EXPORT_CMD[*]}"
    echo "    ${BENCH_CMD[*]}"
    echo
    sed -n '/^## Headline/,/^## Latency/p' "$OUT/bench/report.md" | sed '$d'
    echo "Full report: [bench/report.md](bench/report.md); figures: bench/results.json; log: record.log."
} > "$OUT/README.md"
log "wrote $OUT/README.md"
exit "$status"
