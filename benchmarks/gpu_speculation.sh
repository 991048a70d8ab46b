#!/usr/bin/env bash
# Speculative decoding on an accelerator, one run: the step costs behind shared/device.py's
# speculation costs, the in-process closed loop (no HTTP), then `hearth bench --scenario edit`
# against mlx_lm.server (benchmarks/gpu.sh). Usage on the NVIDIA machine:
#   . /root/gpu/env.sh && benchmarks/gpu_speculation.sh OUTDIR
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUTDIR=${1:-${OUT:-/tmp/hearth-gpu}}
MODELS=${MODELS:-/tmp/hearth-models}
GPU=${GPU:-/root/gpu}
mkdir -p "$OUTDIR" "$MODELS"
export HEARTH_CACHE_DIR=${HEARTH_CACHE_DIR:-$MODELS/cache}
smol=$MODELS/smollm2-bf16
[ -f "$smol/config.json" ] || "$PY" -m gateway import-gguf "$GPU/SmolLM2-135M-Instruct.Q4_1.gguf" "$smol" --dtype bfloat16
{
  echo "## step costs (SmolLM2 bf16, context 256)"
  "$PY" benchmarks/step_costs.py "$smol" --rows 1,8,32 --widths 1,2,5,9,16 --reps 6
  for s in prose edit; do
    echo "## closed loop: $s, 8 streams"
    "$PY" benchmarks/speculation_loop.py "$smol" --scenario "$s" --streams 8 --requests "${LOOP_REQUESTS:-2}" --rounds 2
  done
  echo "## closed loop: edit, 1 stream"
  "$PY" benchmarks/speculation_loop.py "$smol" --scenario edit --streams 1 --requests 2 --rounds 2
} 2>&1 | grep -v -i warn | tee "$OUTDIR/speculation-inprocess.txt"
[ "${BENCH:-1}" = 1 ] || exit 0
SCENARIO=edit RAW=0 MAX_BATCH=16 ONLY=smollm2-bf16 CLIENTS=8 REQUESTS=${REQUESTS:-2} bash benchmarks/gpu.sh "$OUTDIR/edit"
cat "$OUTDIR/edit/smollm2-bf16.txt"
