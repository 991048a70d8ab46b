#!/usr/bin/env bash
# Hearth vs mlx_lm.server vs in-process mlx-lm, one run, same weights and prompts.
# Usage: benchmarks/side_by_side.sh [OUT.json] [extra hearth bench args...]
# Starts both servers on free ports, waits for them, runs `hearth bench --compare --raw`,
# prints the tables, and stops both servers. Run it on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-benchmarks/results/side-by-side-$(date -u +%Y%m%dT%H%M%SZ).json}
shift || true
mkdir -p "$(dirname "$OUT")"
HEARTH_PORT=${HEARTH_PORT:-18080}
MLX_PORT=${MLX_PORT:-18081}
MODEL_DIR=$("$PY" -c "from shared.config import default_model; from worker.model import resolve_folder; print(resolve_folder(default_model()))" | tail -1)
PRELOAD=""
for lib in /usr/lib/*-linux-gnu/openblas-pthread/libblas.so.3; do [ -e "$lib" ] && PRELOAD=$lib; done

"$PY" -m gateway --log-level WARNING serve --port "$HEARTH_PORT" &
HEARTH_PID=$!
LD_PRELOAD=$PRELOAD "$PY" -m mlx_lm.server --model "$MODEL_DIR" --port "$MLX_PORT" --log-level WARNING &
MLX_PID=$!
trap 'kill -INT $HEARTH_PID 2>/dev/null; kill $MLX_PID 2>/dev/null; wait 2>/dev/null || true' EXIT

for _ in $(seq 600); do
  curl -sf "localhost:$HEARTH_PORT/ready" >/dev/null && curl -sf "localhost:$MLX_PORT/health" >/dev/null && break
  sleep 0.5
done

"$PY" -m gateway bench --url "http://127.0.0.1:$HEARTH_PORT" --model smollm2-135m-instruct --name hearth \
  --compare "http://127.0.0.1:$MLX_PORT" --compare-model default_model --compare-name mlx_lm.server \
  --raw --model-path "$MODEL_DIR" --json "$@" > "$OUT"
echo "results: $OUT" >&2
"$PY" -c "import sys, orjson; from gateway.bench.report import text; print(text(orjson.loads(open(sys.argv[1],'rb').read())))" "$OUT" 2>/dev/null \
  || echo "(see $OUT)"
