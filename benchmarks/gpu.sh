#!/usr/bin/env bash
# Hearth vs mlx_lm.server vs in-process BatchGenerator on an accelerator (the NVIDIA H200, or a Mac), one run.
# Usage (on the NVIDIA machine, after /work/shared/gpu/prepare.sh's bundle is unpacked there):
#   . /root/gpu/env.sh && benchmarks/gpu.sh [OUTDIR]
# Models: SmolLM2-135M-Instruct's real weights imported from the GGUF in bfloat16, and a random-weight
# Llama-3.2-1B shape (make_model.py); ONLY=smollm2-f32 adds SmolLM2 in float32. For each: Hearth (max_batch 64) and mlx_lm.server (decode and prompt
# concurrency 64) on the same folder, then `hearth bench --compare --raw` at CLIENTS concurrent streaming
# clients, REQUESTS requests each, 128 new tokens, greedy, in ROUNDS timed rounds (default 3) after an untimed
# one, the targets taking turns. Prints the table last; JSON and logs in OUTDIR.
# PROFILE=1 also records py-spy's raw stacks of Hearth's worker and gateway while the bench runs;
# COMPARE=0 leaves mlx_lm.server out (Hearth and in-process only); COMPARE=hearth puts a second Hearth in its
# place ("hearth-b", the same model section plus the lines in B_TOML, e.g. "admission_hold = 0"): two settings
# taking turns in one run; B_ENV its own environment words (e.g. "GC_FREEZE_OFF=1" with GC_STATS_DIR and
# benchmarks/gc_probe on PYTHONPATH: see its sitecustomize.py); SCENARIO=edit RAW=0 measures speculative
# decoding (gateway/bench/edit.py) instead of the concurrent scenario. MLX_* settings in the environment
# (e.g. MLX_CUDA_USE_CUDNN_SDPA=0) reach every process alike.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUTDIR=${1:-${OUT:-/tmp/hearth-gpu}}
GPU=${GPU:-/root/gpu}
MODELS=${MODELS:-/tmp/hearth-models}
CLIENTS=${CLIENTS:-8,32,64}
REQUESTS=${REQUESTS:-4}
ROUNDS=${ROUNDS:-3}  # timed rounds of each step, the targets taking turns (gateway/bench/turns.py)
WARM_ROUND=${WARM_ROUND:-1}  # one untimed round of each step on every target first (first-use compiles)
MAX_TOKENS=${MAX_TOKENS:-128}
ONLY=${ONLY:-smollm2-bf16,llama-1b-random}
PROFILE=${PROFILE:-0}
COMPARE=${COMPARE:-1}
SPECULATIVE=${SPECULATIVE:-}  # off | lookup: Hearth's speculative setting (unset: its default)
ADMISSION_HOLD=${ADMISSION_HOLD:-}  # Hearth's admission_hold (unset: the backend's rule, shared/device.py)
EXTRA_TOML=${EXTRA_TOML:-}  # more lines for Hearth's model section, e.g. "cache_limit_bytes = 8589934592"
B_TOML=${B_TOML:-}  # COMPARE=hearth: the second Hearth's extra lines
B_ENV=${B_ENV:-}  # COMPARE=hearth: NAME=VALUE words for the second Hearth's environment only
SCENARIO=${SCENARIO:-concurrent}  # edit: speculative decoding's scenario (no in-process reference: RAW=0)
RAW=${RAW:-1}
MAX_BATCH=${MAX_BATCH:-64}  # Hearth's max_batch (the warm-up runs every size up to it)
HEARTH_PORT=${HEARTH_PORT:-18080}
MLX_PORT=${MLX_PORT:-18081}
mkdir -p "$OUTDIR" "$MODELS"
export HEARTH_CACHE_DIR=${HEARTH_CACHE_DIR:-$MODELS/cache}

smol=$MODELS/smollm2-bf16
[ -f "$smol/config.json" ] || "$PY" -m gateway import-gguf "$GPU/SmolLM2-135M-Instruct.Q4_1.gguf" "$smol" --dtype bfloat16
case ",$ONLY," in *,smollm2-f32,*)  # the same weights in float32: the edit scenario's copy holds there
  [ -f "$MODELS/smollm2-f32/config.json" ] || "$PY" -m gateway import-gguf "$GPU/SmolLM2-135M-Instruct.Q4_1.gguf" "$MODELS/smollm2-f32" --dtype float32 ;;
esac
big=$MODELS/llama-1b-random
case ",$ONLY," in *,llama-1b-random,*)
  [ -f "$big/model.safetensors" ] || "$PY" "$GPU/make_model.py" "$smol" "$big" 1b ;;
esac

HEARTH_PID=""; MLX_PID=""
stop_all() {  # Hearth drains on SIGINT; mlx_lm.server needs SIGTERM
  [ -n "$HEARTH_PID" ] && kill -INT "$HEARTH_PID" 2>/dev/null
  [ -n "$MLX_PID" ] && kill -"${MLX_SIG:-TERM}" "$MLX_PID" 2>/dev/null
  for _ in $(seq 60); do
    kill -0 "$HEARTH_PID" 2>/dev/null || kill -0 "$MLX_PID" 2>/dev/null || break; sleep 0.5
  done
  HEARTH_PID=""; MLX_PID=""
}
trap stop_all EXIT

spec_line=""; [ -z "$SPECULATIVE" ] || spec_line="speculative = \"$SPECULATIVE\""
[ -z "$ADMISSION_HOLD" ] || spec_line="$spec_line
admission_hold = $ADMISSION_HOLD"
for name in ${ONLY//,/ }; do
  dir=$MODELS/$name
  cat > "$OUTDIR/$name.toml" <<TOML
[server]
port = $HEARTH_PORT
[[models]]
name = "bench"
path = "$dir"
max_batch = $MAX_BATCH
max_queue = 256
$spec_line
$EXTRA_TOML
TOML
  "$PY" -m gateway --log-level INFO serve --config "$OUTDIR/$name.toml" > "$OUTDIR/$name.hearth.log" 2>&1 &
  HEARTH_PID=$!
  cmp=()
  if [ "$COMPARE" = 1 ]; then
    "$PY" -m mlx_lm.server --model "$dir" --port "$MLX_PORT" --log-level WARNING \
      --decode-concurrency 64 --prompt-concurrency 64 > "$OUTDIR/$name.mlx_lm.log" 2>&1 &
    MLX_PID=$!
    cmp=(--compare "http://127.0.0.1:$MLX_PORT" --compare-model default_model --compare-name mlx_lm.server)
  elif [ "$COMPARE" = hearth ]; then
    { sed "s/^port = .*/port = $MLX_PORT/" "$OUTDIR/$name.toml"; echo "$B_TOML"; } > "$OUTDIR/$name.b.toml"
    env $B_ENV HEARTH_CACHE_DIR=$MODELS/cache-b "$PY" -m gateway --log-level INFO serve --config "$OUTDIR/$name.b.toml" \
      > "$OUTDIR/$name.hearth-b.log" 2>&1 &
    MLX_PID=$!; MLX_SIG=INT
    cmp=(--compare "http://127.0.0.1:$MLX_PORT" --compare-model bench --compare-name hearth-b)
  fi
  for _ in $(seq 600); do
    # the gateway outlives a worker that fails to load: its traceback in the log ends the wait
    { kill -0 "$HEARTH_PID" 2>/dev/null && ! grep -q Traceback "$OUTDIR/$name.hearth.log"; } \
      || { echo "hearth failed"; tail -30 "$OUTDIR/$name.hearth.log"; exit 1; }
    curl -sf "localhost:$HEARTH_PORT/ready" >/dev/null \
      && { [ "$COMPARE" = 0 ] || curl -sf "localhost:$MLX_PORT/$([ "$COMPARE" = 1 ] && echo health || echo ready)" \
        >/dev/null; } && break
    sleep 0.5
  done
  curl -sf "localhost:$HEARTH_PORT/ready" >/dev/null || { echo "hearth never became ready"; tail -30 "$OUTDIR/$name.hearth.log"; exit 1; }
  grep -h "warmed up" "$OUTDIR/$name.hearth.log" | tail -1 || true
  SPY=()
  if [ "$PROFILE" = 1 ]; then
    worker=$(pgrep -P "$HEARTH_PID" -f "m worker" | head -1)
    for who in "worker:$worker" "gateway:$HEARTH_PID"; do
      py-spy record --pid "${who#*:}" --rate 250 --nonblocking --format raw \
        -o "$OUTDIR/$name.pyspy-${who%%:*}.txt" > /dev/null 2>&1 &
      SPY+=("$!")
    done
  fi
  "$PY" -m gateway bench --url "http://127.0.0.1:$HEARTH_PORT" --model bench --name hearth \
    "${cmp[@]}" $([ "$RAW" = 1 ] && echo --raw --model-path "$dir") --scenario "$SCENARIO" --clients "$CLIENTS" \
    --requests-per-client "$REQUESTS" --max-tokens "$MAX_TOKENS" --rounds "$ROUNDS" \
    $([ "$WARM_ROUND" = 1 ] && echo --warm-round) --quiet --json > "$OUTDIR/$name.json"
  "$PY" -c "import json,sys; from gateway.bench import report; print(report.text(json.load(open(sys.argv[1]))))" \
    "$OUTDIR/$name.json" > "$OUTDIR/$name.txt"
  for p in "${SPY[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  stop_all
done
"$PY" benchmarks/gpu_table.py "$OUTDIR"/*.json
