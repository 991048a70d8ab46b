"""Claude Code, headless (``claude -p``), against a real Hearth gateway: it completes a turn, and
on a model whose context can't hold its prompt it gets a clear error and exits at once.

Claude Code's first request is large (a long system prompt, a few dozen tools, ``max_tokens``
32000), so the model is the tiny random one with a long context. To keep the answer short and
never empty, the model's defaults make it say one token over and over (greedy, a strong logit
bias) and the loop guard ends that after three. Claude Code comes from npm into ``.tools/``
(``scripts/setup.sh``); without it and without npm the tests are skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import ROOT, Gateway, serving
from tests.tinymodel import build_tiny_model

pytestmark = pytest.mark.timeout(300)

TOOLS_DIR = ROOT / ".tools"
PACKAGE = "@anthropic-ai/claude-code"


def claude_binary() -> str:
    local = TOOLS_DIR / "node_modules" / ".bin" / "claude"
    if local.exists():
        return str(local)
    found = shutil.which("claude")
    if found:
        return found
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip(
            "Claude Code is not installed (no .tools/node_modules/.bin/claude, no claude on PATH) and npm is missing"
        )
    subprocess.run([npm, "install", "--silent", "--prefix", str(TOOLS_DIR), PACKAGE], check=True, timeout=600)
    return str(local)


@pytest.fixture(scope="module")
def claude() -> str:
    return claude_binary()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    from tokenizers import Tokenizer

    tmp = tmp_path_factory.mktemp("claude-code")
    # Claude Code always offers tools; an English/JSON tokenizer keeps its ~70 kB prompt short
    long = build_tiny_model(tmp / "long", context=65536, tools=True, vocab=8000)
    short = build_tiny_model(tmp / "short", context=2048, tools=True, vocab=8000)
    word = Tokenizer.from_file(str(long / "tokenizer.json")).encode("Hello").ids[0]
    short_answer = {
        "temperature": 0,
        "logit_bias": {str(word): 100},
        "loop_guard": {"repeats": 3, "max_cycle": 1, "min_span": 3},
    }
    models = [
        {"name": "tiny-long", "path": str(long), "aliases": ["claude-*"], "defaults": short_answer},
        {"name": "tiny-short", "path": str(short)},
    ]
    with serving(tmp, models) as g:
        yield g


def run_claude(claude: str, gw: Gateway, model: str, tmp: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),  # no user settings, no login
        "ANTHROPIC_BASE_URL": gw.url,
        "ANTHROPIC_API_KEY": "anything",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }
    t0 = time.monotonic()
    done = subprocess.run(
        [claude, "-p", "Say hello", "--model", model],
        env=env,
        cwd=tmp,
        stdin=subprocess.DEVNULL,  # -p reads piped stdin as more prompt: give it none, never a hang
        capture_output=True,
        text=True,
        timeout=240,
    )
    return done, time.monotonic() - t0


def test_claude_code_completes_a_turn(claude: str, gw: Gateway, tmp_path: Path) -> None:
    done, _ = run_claude(claude, gw, "tiny-long", tmp_path)
    assert done.returncode == 0, f"stdout: {done.stdout}\nstderr: {done.stderr}\n{gw.log()}"
    assert "Hello" in done.stdout  # the model's (forced) answer reached the terminal
    log = gw.log()
    assert 'POST /v1/messages?beta=true HTTP/1.1" 200' in log, log


def test_claude_code_gets_a_clear_error_when_the_prompt_is_too_long(claude: str, gw: Gateway, tmp_path: Path) -> None:
    done, took = run_claude(claude, gw, "tiny-short", tmp_path)
    assert done.returncode != 0
    assert "too long" in (done.stdout + done.stderr).lower(), f"stdout: {done.stdout}\nstderr: {done.stderr}"
    assert took < 60  # a 400 is not retried: it exits at once, no hang
    assert 'POST /v1/messages?beta=true HTTP/1.1" 400' in gw.log()


def test_claude_code_on_the_default_model_gets_past_tools_to_a_context_error(
    claude: str, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """SmolLM2's template renders no tools: the generic tool format takes Claude Code's tools
    (no 400 about tools), and its ~70 kB prompt then meets a clear context-length 400."""
    tmp = tmp_path_factory.mktemp("claude-code-smol")
    with serving(tmp, [{"name": "smol", "path": "default", "aliases": ["claude-*"]}]) as smol:
        done, took = run_claude(claude, smol, "claude-sonnet-4", tmp_path)
        log = smol.log()
    out = (done.stdout + done.stderr).lower()
    assert done.returncode != 0 and "too long" in out, f"stdout: {done.stdout}\nstderr: {done.stderr}"
    assert "does not support tools" not in out and "tools are turned off" not in out
    assert 'POST /v1/messages?beta=true HTTP/1.1" 400' in log
    assert took < 120
