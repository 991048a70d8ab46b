#!/usr/bin/env bash
# A bounded soak on loopback (issue 19): start Hearth on a free loopback port, run mixed traffic
# for a set time (benchmarks/soak.py), sample memory every minute, print the table, stop Hearth.
#
# Usage: benchmarks/soak.sh [OUT.json]
#   DURATION=600      seconds of traffic (REQUESTS=N instead stops after N requests)
#   CONCURRENCY=4     clients
#   KILL_EVERY=180    SIGKILL a worker this often (0: never)
#   UNLOAD_EVERY=150  unload the model through keep_alive 0 this often (0: never)
#   SAMPLE_EVERY=60   seconds between rows
#   MAX_WORDS=400     longest prompt (words)
#   HEARTBEAT_TIMEOUT=120  generous: on a shared 2-core machine one step can take long
#   MODEL_PATH=default   the embedded SmolLM2 (or an MLX folder / GGUF file)
#   MODEL_EXTRA='memory_ceiling = "2GiB"'   more [[models]] settings, one TOML line
#   ROOT=$PWD         the source tree to serve (another checkout for a before/after comparison)
# Run it nice'd on a shared machine: nice -n 10 benchmarks/soak.sh
set -euo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
ROOT=${ROOT:-$HERE}
PY=${PY:-$HERE/.venv/bin/python}
OUT=${1:-$HERE/benchmarks/results/soak-$(date -u +%Y%m%dT%H%M%SZ).json}
mkdir -p "$(dirname "$OUT")"
PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
TMP=$(mktemp -d)
cat > "$TMP/hearth.toml" <<TOML
[server]
host = "127.0.0.1"
port = $PORT
restart_limit = 1000
heartbeat_timeout = ${HEARTBEAT_TIMEOUT:-120}

[[models]]
name = "soak"
path = "${MODEL_PATH:-default}"
max_batch = 8
${MODEL_EXTRA:-}
TOML
cd "$ROOT"
PYTHONPATH="$ROOT" "$PY" -m gateway --log-level WARNING serve --config "$TMP/hearth.toml" >"$TMP/gateway.log" 2>&1 &
GW=$!
trap 'kill -INT $GW 2>/dev/null; wait $GW 2>/dev/null || true; echo "log: $TMP/gateway.log"' EXIT
for _ in $(seq 600); do curl -sf "127.0.0.1:$PORT/ready" >/dev/null && break; sleep 0.5; done
curl -sf "127.0.0.1:$PORT/ready" >/dev/null || { tail -40 "$TMP/gateway.log"; exit 1; }
ARGS=(--url "http://127.0.0.1:$PORT" --model soak --gateway-pid "$GW" --concurrency "${CONCURRENCY:-4}"
      --sample-every "${SAMPLE_EVERY:-60}" --kill-every "${KILL_EVERY:-180}" --unload-every "${UNLOAD_EVERY:-150}"
      --max-words "${MAX_WORDS:-400}" --out "$OUT")
if [ -n "${REQUESTS:-}" ]; then ARGS+=(--requests "$REQUESTS" --sample-requests "${SAMPLE_REQUESTS:-25}");
else ARGS+=(--duration "${DURATION:-600}"); fi
"$PY" "$HERE/benchmarks/soak.py" "${ARGS[@]}"
"$PY" "$HERE/benchmarks/soak_report.py" "$OUT"
