#!/usr/bin/env bash
# The GPU check: every CUDA / TensorRT path of the package in one go, one table at the end.
#
#   bash bench/gpu_check.sh                 # on a CUDA machine, from the repository root
#   PYTHON=.venv/bin/python bash bench/gpu_check.sh    # use an existing environment as it is
#   GPU_CHECK_BUDGET_S=570 GPU_CHECK_WORK=/tmp/gpu_check bash bench/gpu_check.sh
#
# Rows: environment set-up, the GPU, fp16 export, the CPU fp32 reference, ONNX Runtime's
# CUDA and TensorRT providers (engine build, then a cache hit on the second start), the
# pre-flight engine command (build, then cache hit), the TensorRT back end, PyTorch fp32 and
# fp16 on CUDA, 50 iterations of AMP training, 2-process NCCL training (two GPUs or more).
# Each row says ok, failed (with the reason) or skipped (why); one failing row never stops
# the others. Latency: median ms of 50 inferences of the default model (models/default.onnx,
# its checkpoint for PyTorch) after warm-up. Agreement: share of pixels whose class matches
# ONNX Runtime fp32 on the CPU, over 8 synthetic 512x512 scenes.
#
# Environment: $PYTHON if set, else ./.venv if it exists (both used as they are: nothing is
# installed into them); else a venv of its own in $GPU_CHECK_WORK with requirements.txt and,
# where nvidia-smi sees a GPU, onnxruntime-gpu, tensorrt and cuda-python. The whole run stays
# within GPU_CHECK_BUDGET_S seconds (default 570): a row that no longer fits is skipped.
set -u -o pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${GPU_CHECK_WORK:-$(mktemp -d /tmp/gpu_check.XXXXXX)}"
BUDGET_S="${GPU_CHECK_BUDGET_S:-570}"
ROWS="$WORK/rows.jsonl"
GPU_EXTRAS=(onnxruntime-gpu tensorrt cuda-python)
START_S=$SECONDS
mkdir -p "$WORK"
: > "$ROWS"
cd "$REPO" || exit 1

json_escape() {
    local text=${1//\\/\\\\}
    text=${text//\"/\\\"}
    text=${text//$'\n'/ }
    printf '%s' "${text//$'\t'/ }"
}

# record ROW STATUS DETAIL: one JSON line, as bench/gpu_rows.py writes for its rows
record() {
    printf '{"row": "%s", "status": "%s", "detail": "%s", "latency_ms": null, "agreement": null}\n' \
        "$1" "$2" "$(json_escape "$3")" >> "$ROWS"
    printf '%s: %s (%s)\n' "$1" "$2" "$3"
}

# seconds left for a row that needs up to $1 seconds; 0 when it no longer fits
time_for() {
    local left=$((BUDGET_S - (SECONDS - START_S)))
    if [ "$left" -lt 20 ]; then echo 0; elif [ "$left" -lt "$1" ]; then echo "$left"; else echo "$1"; fi
}

last_line() { grep -v '^\s*$' "$1" | tail -n 1 | cut -c1-300; }

# run_cmd ROW LIMIT_S COMMAND...: ok when it exits 0, failed with its last output line else
run_cmd() {
    local row=$1 limit log
    limit=$(time_for "$2")
    shift 2
    if [ "$limit" -eq 0 ]; then
        record "$row" skipped "the ${BUDGET_S} s budget is spent"
        return 1
    fi
    log="$WORK/$row.log"
    if timeout --kill-after=10 "$limit" "$@" > "$log" 2>&1; then
        record "$row" ok "$(last_line "$log")"
        return 0
    fi
    local code=$?
    if [ "$code" -eq 124 ] || [ "$code" -eq 137 ]; then
        record "$row" failed "timed out after ${limit} s; log: $log"
    else
        record "$row" failed "exit $code: $(last_line "$log")"
    fi
    return 1
}

# python_row ROW LIMIT_S: a row of bench/gpu_rows.py (it records itself)
python_row() {
    local limit
    limit=$(time_for "$2")
    if [ "$limit" -eq 0 ]; then
        record "$1" skipped "the ${BUDGET_S} s budget is spent"
        return
    fi
    if ! timeout --kill-after=10 "$limit" "$PY" bench/gpu_rows.py "$1" --out "$ROWS" \
            --work "$WORK" > "$WORK/$1.log" 2>&1; then
        # a failed row has recorded itself; a killed or crashed one has not
        grep -q "\"row\": \"$1\"" "$ROWS" \
            || record "$1" failed "no result within ${limit} s: $(last_line "$WORK/$1.log")"
    fi
}

# -- the GPU ----------------------------------------------------------------------------------
GPUS=0
if command -v nvidia-smi > /dev/null 2>&1 && nvidia-smi -L > "$WORK/gpus.txt" 2>&1; then
    GPUS=$(grep -c '^GPU ' "$WORK/gpus.txt")
    record gpu ok "$GPUS GPU(s): $(head -n 1 "$WORK/gpus.txt" | cut -c1-120); driver $(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -n 1)"
else
    record gpu skipped "nvidia-smi finds no NVIDIA GPU here: every GPU row below skips"
fi

# -- the environment --------------------------------------------------------------------------
if [ -n "${PYTHON:-}" ]; then
    PY=$PYTHON
    record setup ok "using \$PYTHON=$PY as it is"
elif [ -x "$REPO/.venv/bin/python" ]; then
    PY=$REPO/.venv/bin/python
    record setup ok "using $PY as it is"
else
    PY=$WORK/venv/bin/python
    extras=()
    if [ "$GPUS" -gt 0 ]; then extras=("${GPU_EXTRAS[@]}"); fi
    # shellcheck disable=SC2016
    run_cmd setup 300 bash -c 'python3 -m venv --system-site-packages "$1/venv" \
        && "$1/venv/bin/pip" install -q -r requirements.txt \
        && if [ "$#" -gt 1 ]; then "$1/venv/bin/pip" uninstall -q -y onnxruntime \
            && "$1/venv/bin/pip" install -q "${@:2}"; fi \
        && echo "venv $1/venv: requirements.txt ${*:2}"' _ "$WORK" "${extras[@]}"
fi
"$PY" -c "import sys; print(sys.version.split()[0])" > /dev/null 2>&1 \
    || record python failed "$PY cannot run: the rows below fail"

# -- rows ---------------------------------------------------------------------------------------
run_cmd fp16-export 150 "$PY" -m training export --checkpoint models/default.safetensors \
    --format onnx --fp16 --out "$WORK/default_fp16.onnx"
python_row cpu-reference 90
python_row ort-cuda 60
python_row ort-tensorrt 240
python_row tensorrt-build 240
python_row tensorrt-backend 90
python_row pytorch-fp32 60
python_row pytorch-fp16 60

cuda_ok=0
if [ "$GPUS" -gt 0 ] && "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" \
        > /dev/null 2>&1; then
    cuda_ok=1
fi
TRAIN_ARGS=(--config training/configs/student.yaml --data "$WORK/data" iters=50
            warmup_iters=5 eval_every=50 input_size=256 crop_size=256 batch_size=8 workers=2
            device=cuda)
if [ "$cuda_ok" -eq 1 ]; then
    run_cmd synth-data 60 "$PY" -m training synth --out "$WORK/data" --count 48 --size 256
    run_cmd amp-train 150 "$PY" -m training train "${TRAIN_ARGS[@]}" --out "$WORK/amp" amp=true
    if [ "$GPUS" -ge 2 ]; then
        run_cmd nccl-train 150 "$PY" -m torch.distributed.run --standalone --nproc_per_node=2 \
            -m training train "${TRAIN_ARGS[@]}" --out "$WORK/nccl" amp=true
    else
        record nccl-train skipped "needs two GPUs; nvidia-smi lists $GPUS"
    fi
else
    record amp-train skipped "torch sees no CUDA device"
    record nccl-train skipped "torch sees no CUDA device"
fi

# -- the table ----------------------------------------------------------------------------------
echo
echo "GPU check, $(date -u '+%Y-%m-%d %H:%M UTC'), $((SECONDS - START_S)) s, commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown); logs in $WORK"
"$PY" - "$ROWS" <<'EOF' 2>/dev/null || cat "$ROWS"
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
print("| row | status | latency (ms) | agreement with CPU fp32 | detail |")
print("|---|---|---|---|---|")
for r in rows:
    lat = "-" if r["latency_ms"] is None else "%.2f" % r["latency_ms"]
    agr = "-" if r["agreement"] is None else "%.2f%%" % (100 * r["agreement"])
    print("| %s | %s | %s | %s | %s |" % (r["row"], r["status"], lat, agr,
                                         r["detail"].replace("|", "/")))
EOF
if grep -q '"status": "failed"' "$ROWS"; then exit 1; fi
exit 0
