"""OpenAI's Codex CLI, headless (``codex exec``), against a real Hearth gateway through a custom
provider (``wire_api = "responses"``): a turn in which the model calls ``exec_command`` and gets
its output back, and a plain answer from SmolLM2 running beyond its trained context.

Codex's one request per turn is ~40 kB: ~10k tokens of instructions and nine tools (function
tools, a ``namespace``, a hosted ``web_search`` Hearth leaves out), streamed, ``store: false``.

- The tool turn runs on the scripted tool model (tests/tinymodel.py): it calls
  ``exec_command`` with ``pwd`` while its prompt holds no tool result and answers "Done." once
  one is there, so Codex runs the command, sends its output back, and ends the turn.
- The plain answer runs on SmolLM2 (trained on 8,192 tokens) with ``context_length = 16384``
  (YaRN RoPE scaling), since the prompt alone is longer than 8,192 tokens. Codex always offers
  tools, and SmolLM2's own template renders none, so its folder here gets a ChatML template that
  does (``CHATML_TOOLS``). The turn took 2.2 minutes on the shared 2-core CPU at load ~4, and 7-8
  minutes at load ~10, hence the long timeouts and heartbeat timeout and the small prefill step.
  It answered "The capital of France is Paris." (with YaRN's attention temperature it had said
  "Le Grand Jérusalem …"); the prompt holds the date and paths, so the test checks that the turn
  completes and an answer reaches the terminal, not its words.

Codex comes from npm into ``.tools/`` (``scripts/setup.sh``); without it the test installs it,
and it skips only where npm is missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import ROOT, Gateway, serving
from tests.tinymodel import ANSWER_TOKEN, CHATML_TOOLS, build_scripted_tool_model, scripted_call

pytestmark = pytest.mark.timeout(2400)

TOOLS_DIR = ROOT / ".tools"
PACKAGE = "@openai/codex@0.171.0"


def codex_binary() -> str:
    local = TOOLS_DIR / "node_modules" / ".bin" / "codex"
    if local.exists():
        return str(local)
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("Codex is not installed (no .tools/node_modules/.bin/codex) and npm is missing to install it")
    subprocess.run([npm, "install", "--silent", "--prefix", str(TOOLS_DIR), PACKAGE], check=True, timeout=600)
    return str(local)


@pytest.fixture(scope="module")
def codex() -> str:
    return codex_binary()


def smollm2_with_tool_template(out: Path) -> Path:
    """SmolLM2 (the embedded GGUF, imported as float32) with a ChatML template that renders
    tools; the weights are linked, not copied."""
    from shared.config import default_model_path
    from worker.gguf import cached_import

    src = cached_import(default_model_path(), dtype="float32")
    out.mkdir(parents=True)
    for f in src.iterdir():
        if f.suffix == ".safetensors":
            (out / f.name).symlink_to(f)
        elif f.is_file() and f.name != "tokenizer_config.json":
            shutil.copy(f, out / f.name)
    tok_cfg = json.loads((src / "tokenizer_config.json").read_text())
    tok_cfg["chat_template"] = CHATML_TOOLS
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    return out


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("codex")
    scripted = build_scripted_tool_model(tmp / "scripted", scripted_call("exec_command", {"cmd": "pwd"}))
    smol = smollm2_with_tool_template(tmp / "smol-tools")
    models = [
        {"name": "scripted", "path": str(scripted), "defaults": {"temperature": 0}},
        {
            "name": "smol",
            "path": str(smol),
            "context_length": 16384,  # beyond the trained 8192: YaRN by a factor of 2
            "prefill_step": 256,  # shorter steps over the long prompt: heartbeats between them
            "max_tokens": 48,
            "defaults": {"temperature": 0},
        },
    ]
    with serving(tmp, models, server={"heartbeat_timeout": 1800}) as g:
        yield g


def run_codex(codex: str, gw: Gateway, model: str, prompt: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    home = cwd / "codex-home"
    home.mkdir(exist_ok=True)
    provider = {
        "name": '"hearth"',
        "base_url": f'"{gw.url}/v1"',
        "wire_api": '"responses"',
        "env_key": '"OPENAI_API_KEY"',
        "stream_idle_timeout_ms": "2000000",  # a long prefill: Hearth keeps the line alive meanwhile
        "request_max_retries": "0",  # a failure shows as one, not as a retry
        "stream_max_retries": "0",
    }
    args = [codex, "exec", "--skip-git-repo-check", "-c", "model_provider=hearth"]
    for key, value in provider.items():
        args += ["-c", f"model_providers.hearth.{key}={value}"]
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "CODEX_HOME": str(home),
        "OPENAI_API_KEY": "anything",
    }
    return subprocess.run(
        [*args, "-m", model, prompt],
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,  # exec reads piped stdin as more prompt: give it none
        capture_output=True,
        text=True,
        timeout=2000,
    )


def access_lines(gw: Gateway, model: str) -> list[str]:
    log = gw.log_path.read_text(errors="replace")
    return [line for line in log.splitlines() if "hearth.access" in line and f"model={model} " in line]


def test_codex_runs_a_command_and_gets_its_output_back(codex: str, gw: Gateway, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    done = run_codex(codex, gw, "scripted", "Where am I? Find out with a command.", work)
    transcript = done.stdout + done.stderr
    assert done.returncode == 0, f"{transcript}\n{gw.log()}"
    assert done.stdout.strip().endswith(ANSWER_TOKEN), transcript  # the answer once the result was in
    assert re.search(r"exec\s.*\bpwd\b", transcript), transcript  # Codex ran the model's call ...
    assert str(work) in transcript  # ... and printed its output, which went back to the model
    first, second = access_lines(gw, "scripted")[-2:]
    assert "status=200" in first and "finish_reason=tool_calls" in first, first
    assert "status=200" in second and "finish_reason=stop" in second, second
    prompt = int(re.search(r"prompt_tokens=(\d+)", first).group(1))  # type: ignore[union-attr]
    cached = int(re.search(r"cached_tokens=(\d+)", second).group(1))  # type: ignore[union-attr]
    assert prompt > 8000 and cached >= prompt  # the whole first turn came from the KV cache
    assert "tools left out of the prompt (Hearth can't run them): web_search" in gw.log_path.read_text()


def test_codex_gets_a_plain_answer_from_smollm2_beyond_its_trained_context(
    codex: str, gw: Gateway, tmp_path: Path
) -> None:
    models = {m["id"]: m for m in gw.http.get("/v1/models").json()["data"]}
    assert models["smol"]["context_length"] == 16384 and models["smol"]["trained_context_length"] == 8192
    t0 = time.monotonic()
    done = run_codex(codex, gw, "smol", "What is the capital of France? Answer briefly.", tmp_path)
    took = time.monotonic() - t0
    transcript = done.stdout + done.stderr
    assert done.returncode == 0, f"{transcript}\n{gw.log()}"
    assert done.stdout.strip(), transcript  # the model's answer reached the terminal
    (line,) = access_lines(gw, "smol")
    assert "status=200" in line, line
    prompt = int(re.search(r"prompt_tokens=(\d+)", line).group(1))  # type: ignore[union-attr]
    assert prompt > 8192, line  # longer than SmolLM2 was trained on
    print(f"codex on smollm2: {prompt} prompt tokens, {took:.0f}s; answer: {done.stdout.strip()!r}")
